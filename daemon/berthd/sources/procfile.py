"""Procfiles, by the smartmob rules.

    # comment
    web: PORT=8080 GREETING="hello world" python -m http.server $PORT
    worker: ./worker --queue default \\
            --verbose

UTF-8 only; blank lines and `#` comments are ignored; each entry is `TYPE: command`; leading
`VAR=value` words become the type's environment; a trailing backslash continues the line; a type
given twice is an error naming both lines. The command is the user's own shell command: berthd runs
it as the single argument of `/bin/sh -c`, never pasted into another string.
"""

from __future__ import annotations

import re
import shlex

import msgspec

TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
MAX_PROCFILE = 1024 * 1024


class ProcfileError(ValueError):
    pass


class ProcessType(msgspec.Struct, frozen=True):
    command: str
    env: dict[str, str] = msgspec.field(default_factory=dict)
    line: int = 0


def parse_procfile(data: bytes) -> dict[str, ProcessType]:
    if len(data) > MAX_PROCFILE:
        raise ProcfileError(f"Procfile is larger than {MAX_PROCFILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProcfileError(f"Procfile is not valid UTF-8 (byte {exc.start})") from None
    types: dict[str, ProcessType] = {}
    for number, line in _logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, colon, command = stripped.partition(":")
        name = name.strip()
        if not colon:
            raise ProcfileError(f"Procfile line {number}: expected 'TYPE: command', found no colon")
        if not TYPE.match(name):
            raise ProcfileError(f"Procfile line {number}: invalid process type {name!r}")
        if name in types:
            raise ProcfileError(
                f"Procfile line {number}: process type {name!r} is already defined on line {types[name].line}"
            )
        env, command = _split_assignments(command.strip(), number)
        if not command:
            raise ProcfileError(f"Procfile line {number}: process type {name!r} has no command")
        types[name] = ProcessType(command, env, number)
    if not types:
        raise ProcfileError("Procfile defines no process type")
    return types


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each numbered by the line it starts on."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        result.append((start, " ".join(part.strip() for part in pending)))
        pending = []
    if pending:
        result.append((start, " ".join(part.strip() for part in pending)))
    return result


def _split_assignments(command: str, number: int) -> tuple[dict[str, str], str]:
    env: dict[str, str] = {}
    rest = command
    while ASSIGNMENT.match(rest):
        try:
            lexer = shlex.shlex(rest, posix=True, punctuation_chars=False)
            lexer.whitespace_split = True
            word = lexer.get_token() or ""
        except ValueError as exc:
            raise ProcfileError(f"Procfile line {number}: {exc}") from None
        key, _, value = word.partition("=")
        env[key] = value
        consumed = _consumed_length(rest, word)
        rest = rest[consumed:].lstrip()
    return env, rest


def _consumed_length(text: str, word: str) -> int:
    """How many characters of `text` the first shell word `word` took (quotes included)."""
    for end in range(1, len(text) + 1):
        if end == len(text) or text[end].isspace():
            try:
                if shlex.split(text[:end]) == [word]:
                    return end
            except ValueError:
                continue
    return len(text)
