"""Turning one request line into a command name and its arguments.

Text lines are split with POSIX shell quoting rules but never reach a shell. Flags may stand before the
command name (dokku style): `--force apps:destroy x` is `apps:destroy x --force`. Before the name, a flag
that takes a value is written `--flag=value`.

A JSON request may nest its named arguments at most `MAX_JSON_DEPTH` levels deep (an inline infrastructure
document needs a handful); deeper is `invalid_request`, decided before anything recurses into it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import msgspec

from berth.messages import JsonRequest

_QUOTING = frozenset("'\"\\")
BLANK = " \t\r\n\x0b\x0c"  # what separates words, as in the shell; other control characters are not blank
_WORDS = re.compile(r"[ \t\r\n\x0b\x0c]+")


class RequestError(Exception):
    """A line that is not a request at all: the answer is `invalid_request`."""


@dataclass(slots=True)
class Request:
    cmd: str
    tokens: list[str] = field(default_factory=list)
    named: dict[str, Any] | None = None
    id: str | int | None = None
    is_json: bool = False


_json_request = msgspec.json.Decoder(JsonRequest)
MAX_JSON_DEPTH = 64
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


def _deeper_than(value: Any, limit: int) -> bool:
    """Does `value` nest lists and objects more than `limit` levels deep? (Iterative: no recursion.)"""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def parse_request(raw: bytes) -> Request | None:
    """The request in one line, or None for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"request is not valid UTF-8 (byte {exc.start})") from None
    if "\x00" in line:
        raise RequestError("request contains a NUL byte")
    stripped = line.strip(BLANK)
    if not stripped:
        return None
    if stripped.startswith("{"):
        return _parse_json(stripped)
    return _parse_text(stripped)


def _parse_json(text: str) -> Request:
    try:
        req = _json_request.decode(text)
    except msgspec.ValidationError as exc:
        raise RequestError(f"invalid JSON request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    except RecursionError:  # deeper than the decoder goes: certainly deeper than the limit
        raise RequestError(TOO_DEEP) from None
    # each level takes a `[` or a `{`: with fewer of them in the line there is nothing to measure
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(req.args, MAX_JSON_DEPTH - 1):
        raise RequestError(TOO_DEEP)
    if isinstance(req.args, dict):
        return Request(req.cmd, named=req.args, id=req.id, is_json=True)
    return Request(req.cmd, list(req.args), id=req.id, is_json=True)


def _parse_text(text: str) -> Request:
    if _QUOTING.isdisjoint(text):
        tokens = [word for word in _WORDS.split(text) if word]
    else:
        try:
            tokens = shlex.split(text, posix=True)
        except ValueError as exc:
            raise RequestError(f"cannot split request: {str(exc).lower()}") from None
    if not tokens:
        raise RequestError("empty command")
    cmd, rest = _hoist_command(tokens)
    return Request(cmd, rest)


def _hoist_command(tokens: list[str]) -> tuple[str, list[str]]:
    """The first token that is not a flag is the command; flags before it move after it."""
    for index, token in enumerate(tokens):
        if token == "--":
            break
        if not token.startswith("-"):
            return token, tokens[:index] + tokens[index + 1 :]
    raise RequestError("no command name in request")
