"""Secrets out of what berthd logs and answers: one place decides how an argument may be shown.

Both request forms (words and JSON named parameters) show their arguments through `shown`, so a secret
parameter is `***` (`KEY=***` for a `KEY=VALUE` word) and a URL loses its user and password either way.
`Scrubber` is the net under that: the literal secret values of one request, removed from the text of
its failed answer, of its answer in the log and of any traceback it causes, whatever handler or library
quoted them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote

MASK = "***"
MIN_SCRUBBED = 4
"""Shorter secret values are not scrubbed out of free text: `***` for every `a` of a message helps no one."""

# A URL's authority runs from `//` to the first `/`, `?`, `#` (RFC 3986) or blank; its user and password
# end at the authority's *last* `@`, so a password holding an `@` is hidden whole.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def without_credentials(text: str) -> str:
    """A URL's user and password never reach the log: `https://u:p@host/x` is `https://***@host/x`."""
    return _USERINFO.sub(rf"\1{MASK}@", text) if "@" in text else text


def _argument_without_credentials(value: str) -> str:
    """One argument that holds a URL: hidden from its `://` to its last `@`, wherever that is. Stricter
    than free text: a password holding a raw `/`, `?`, `#` or a blank (which ends the authority for a URL
    parser) is hidden whole too; at worst an `@` in a path is hidden with what comes before it."""
    start = value.find("://")
    at = value.rfind("@")
    if start < 0 or at < start:
        return without_credentials(value)
    return value[: start + 3] + MASK + value[at:]


def _argument_userinfo(value: str) -> str | None:
    start = value.find("://")
    at = value.rfind("@")
    return value[start + 3 : at] if 0 <= start < at else None


def masked(value: Any, pairs: bool = False) -> Any:
    """A secret as it may be shown: `***`, or `KEY=***` for a word of a `KEY=VALUE` parameter."""
    if isinstance(value, str):
        key, has_value, _ = value.partition("=")
        return f"{key}={MASK}" if pairs and has_value and _VARIABLE.match(key) else MASK
    if isinstance(value, list):
        return [masked(item, pairs) for item in value]
    return MASK


def shown(value: Any, secret: bool = False, pairs: bool = False) -> Any:
    """An argument as the log may show it, whichever form of request it came in."""
    if secret:
        return masked(value, pairs)
    if isinstance(value, str):
        return _argument_without_credentials(value)
    if isinstance(value, list):
        return [shown(item) for item in value]
    if isinstance(value, dict):
        return {without_credentials(str(key)): shown(item) for key, item in value.items()}
    return value


def secret_values(value: Any, secret: bool = False, pairs: bool = False) -> Iterator[str]:
    """The literal secrets in an argument: a secret's value (a pair's VALUE), a URL's password."""
    if isinstance(value, str):
        if secret:
            key, has_value, rest = value.partition("=")
            yield rest if pairs and has_value and _VARIABLE.match(key) else value
        elif "@" in value:
            found = [value[match.end(1) : match.end() - 1] for match in _USERINFO.finditer(value)]
            whole = _argument_userinfo(value)
            for userinfo in [*found, *([whole] if whole is not None else [])]:
                user, has_password, password = userinfo.partition(":")
                hidden = password if has_password else user  # `user:password`, or a token alone
                yield hidden
                yield unquote(hidden)
    elif isinstance(value, list):
        for item in value:
            yield from secret_values(item, secret, pairs)
    elif isinstance(value, dict):
        for item in value.values():
            yield from secret_values(item, secret, pairs)


class Scrubber:
    """Removes one request's secret values from any text about it."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first, so that a secret containing another is removed whole; only where it stands on its
        # own (not inside a longer word or number), so that `1000` given as a secret leaves `21000` alone
        kept = sorted({s for s in secrets if len(s) >= MIN_SCRUBBED}, key=len, reverse=True)
        alternatives = "|".join(re.escape(s) for s in kept)
        self._pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])") if kept else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return without_credentials(text)

    @staticmethod
    def data(value: Any) -> Any:
        """Every string of a JSON-like value without URL credentials. Literal values are left alone:
        structured data (a job id, a count) is no free text, and a `***` inside it would break it."""
        if isinstance(value, str):
            return without_credentials(value)
        if isinstance(value, list):
            return [Scrubber.data(item) for item in value]
        if isinstance(value, dict):
            return {without_credentials(str(key)): Scrubber.data(item) for key, item in value.items()}
        return value


NO_SECRETS = Scrubber()
