"""Procfiles, by the smartmob rules.

    # comment
    web: PORT=8080 GREETING="hello world" python -m http.server $PORT
    worker: ./worker --queue default \\
            --verbose

UTF-8 only; blank lines and `#` comments are ignored; each entry is `TYPE: command`; leading
`VAR=value` words become the type's environment; a trailing backslash continues the line; a type
given twice is an error naming both lines. The command is the user's own shell command: berthd runs
it as the single argument of `/bin/sh -c`, never pasted into another string.

Parsing is linear in the size of the file (each character is looked at a bounded number of times),
and a Procfile is at most `MAX_PROCFILE` bytes, a logical line at most `MAX_LINE`: a command longer
than that could not be run anyway (Linux takes at most 128 KiB in one argument).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import msgspec

TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
MAX_PROCFILE = 256 * 1024
MAX_LINE = 64 * 1024
UNQUOTED = re.compile(r"[^\s\\'\"]+")
DOUBLE_QUOTED_STOP = re.compile(r'["\\]')  # the end of double quotes, or a backslash inside them
DOUBLE_QUOTED_ESCAPES = frozenset('$`"\\')  # what a backslash escapes inside double quotes


class ProcfileError(ValueError):
    pass


class ProcessType(msgspec.Struct, frozen=True):
    command: str
    env: dict[str, str] = msgspec.field(default_factory=dict)
    line: int = 0


def parse_procfile(source: bytes | Path) -> dict[str, ProcessType]:
    """The process types of a Procfile, given as its bytes or its path (then read here, never more
    than the limit allows: call it on a worker thread)."""
    data = _read_bounded(source) if isinstance(source, Path) else source
    if len(data) > MAX_PROCFILE:
        raise ProcfileError(f"Procfile is larger than {MAX_PROCFILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProcfileError(f"Procfile is not valid UTF-8 (byte {exc.start})") from None
    types: dict[str, ProcessType] = {}
    for number, line in _logical_lines(text):
        if len(line) > MAX_LINE:
            raise ProcfileError(f"Procfile line {number} is longer than {MAX_LINE} characters")
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


def _read_bounded(path: Path) -> bytes:
    """The file's first MAX_PROCFILE + 1 bytes: enough to know it is too large. Not through a link."""
    try:
        # not blocking on a FIFO a build may have left in its place
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ProcfileError("the Procfile is not a regular file")
            os.set_blocking(fd, True)
            return file.read(MAX_PROCFILE + 1)
    except OSError as exc:
        raise ProcfileError(f"cannot read the Procfile: {exc.strerror}") from None


def _split_assignments(command: str, number: int) -> tuple[dict[str, str], str]:
    """Leading `VAR=value` shell words become the environment; the rest is the command."""
    env: dict[str, str] = {}
    position = _skip_blanks(command, 0)
    while match := ASSIGNMENT.match(command, position):
        value, position = _shell_word(command, match.end(), number)
        env[match.group()[:-1]] = value
        position = _skip_blanks(command, position)
    return env, command[position:]


def _skip_blanks(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _shell_word(text: str, position: int, number: int) -> tuple[str, int]:
    """The rest of the shell word that starts before `position` (POSIX quoting: backslashes, single
    and double quotes), unquoted, and where it ends. One pass: each character is looked at once,
    a quoted run is found with one search."""
    parts: list[str] = []
    end = len(text)
    while position < end and not text[position].isspace():
        char = text[position]
        if char == "\\":
            if position + 1 < end:
                parts.append(text[position + 1])
            position += 2
        elif char == "'":
            close = text.find("'", position + 1)
            if close < 0:
                raise ProcfileError(f"Procfile line {number}: no closing quotation")
            parts.append(text[position + 1 : close])
            position = close + 1
        elif char == '"':
            position = _double_quoted(text, position + 1, parts, number)
        else:
            run = UNQUOTED.match(text, position)
            assert run is not None  # not a blank, a backslash or a quote
            parts.append(run.group())
            position = run.end()
    return "".join(parts), position


def _double_quoted(text: str, position: int, parts: list[str], number: int) -> int:
    """Inside double quotes from `position`: the text, unquoted, into `parts`; where the quotes end."""
    while True:
        stop = DOUBLE_QUOTED_STOP.search(text, position)
        if stop is None:
            raise ProcfileError(f"Procfile line {number}: no closing quotation")
        close = stop.start()
        parts.append(text[position:close])
        if text[close] == '"':
            return close + 1
        escaped = text[close + 1 : close + 2]
        parts.append(escaped if escaped and escaped in DOUBLE_QUOTED_ESCAPES else "\\" + escaped)
        position = close + 2
