"""Line framing with a byte limit, free of I/O so the server and the clients share it.

Feed it bytes as they arrive; it yields complete lines (without the `\n` and a trailing `\r`), or
`TooLong` once a line passes the limit, after which the rest of that line is skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TooLong:
    """A line longer than the limit; its bytes were dropped up to the next newline."""

    limit: int


class LineSplitter:
    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> Iterator[bytes | TooLong]:
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if self._skipping:
                self._skipping = False
            elif len(self._buffer) + (newline - start) > self.max_line:
                self._buffer.clear()
                yield TooLong(self.max_line)
            else:
                self._buffer += data[start:newline]
                line = bytes(self._buffer)
                self._buffer.clear()
                yield line[:-1] if line.endswith(b"\r") else line
            start = newline + 1
        if self._skipping:
            return
        self._buffer += data[start:]
        if len(self._buffer) > self.max_line:
            self._buffer.clear()
            self._skipping = True
            yield TooLong(self.max_line)

    def end(self) -> Iterator[bytes]:
        """At end of input: a last line without its newline still counts as a line."""
        if self._buffer and not self._skipping:
            line = bytes(self._buffer)
            self._buffer.clear()
            yield line[:-1] if line.endswith(b"\r") else line


MAX_ANSWER = 256 * 1024 * 1024
"""The longest answer line a client accepts (an answer's `data` can be large: a long listing, many lines)."""


class AnswerLines:
    """The clients' side: bytes from berthd in, complete answer lines out (one splitter for both clients)."""

    def __init__(self, max_line: int = MAX_ANSWER) -> None:
        self._splitter = LineSplitter(max_line)
        self._ready: deque[bytes] = deque()

    def next_line(self) -> bytes | None:
        """The next complete line, or None until more bytes are fed."""
        return self._ready.popleft() if self._ready else None

    def feed(self, data: bytes) -> None:
        for line in self._splitter.feed(data):
            if isinstance(line, TooLong):
                raise ConnectionError(f"berthd sent an answer longer than {line.limit} bytes")
            self._ready.append(line)


DEFAULT_MAX_LINE = 2 * 1024 * 1024
"""berthd's default `--max-line`: the standalone-services seed's default 1 MiB upload chunk fits in base64."""

CHUNK_LINE_ROOM = 256
"""What an `upload:chunk` line holds besides the chunk's base64: the command, the session, the index, the
JSON around them and an `id`, with room to spare."""


def largest_chunk(max_line: int) -> int:
    """The most bytes an upload chunk may have for its `upload:chunk` line to fit in `max_line` bytes
    (base64 makes 4 characters of every 3 bytes)."""
    return max(0, (max_line - CHUNK_LINE_ROOM) // 4 * 3)
