"""Line framing with a byte limit, free of I/O so the server and the clients share it.

Feed it bytes as they arrive; it yields complete lines (without the `\n` and a trailing `\r`), or
`TooLong` once a line passes the limit, after which the rest of that line is skipped.
"""

from __future__ import annotations

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
