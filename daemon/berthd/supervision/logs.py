"""Process logs: one size-rotated file per process, read backwards for a tail, followed across rotations.

Each line is stored as `TIMESTAMP STREAM TEXT`. A line longer than `MAX_LOG_LINE` is cut into pieces,
each piece but the last stored with `+` after its stream (`stdout+`: the line goes on in the next one),
so output without newlines never makes a line of unbounded size. A log file never grows past its
`max_bytes`: a block of lines that would overrun it is split at a line, the rest goes to the next file.
Writers append to the page cache on the event loop (an
append is cheaper than a hop to a worker thread and never waits on the disk). Followers read the files
at their own pace, so a slow follower never holds up the process or the other followers; when a
follower falls so far behind that files it still needed were rotated away, it is told how many lines
it missed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from berth.messages import LogEvent

READ_BLOCK = 65536
MAX_LOG_LINE = 16 * 1024  # longer lines are cut into pieces of this size (as Docker does)
CONTINUED = "+"  # after the stream of a stored piece whose line goes on in the next piece
EVENT_BACKLOG_BYTES = 1024 * 1024  # log events held for one slow client, per stream of events
EVENT_COST = 128  # what an event holds beyond its text (the object, its fields, its JSON), roughly


@dataclass(frozen=True, slots=True)
class LogLine:
    timestamp: str
    stream: str
    text: str
    process: str = ""
    continued: bool = False  # a piece of a longer line, which goes on in the next line


def _timestamp() -> bytes:
    now = time.time()
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()
        + f".{int(now % 1 * 1000):03d}Z".encode()
    )


def parse_line(raw: bytes, process: str = "") -> LogLine:
    parts = raw.split(b" ", 2)
    if len(parts) < 3:
        parts += [b""] * (3 - len(parts))
    stream = parts[1].decode(errors="replace")
    continued = stream.endswith(CONTINUED)
    return LogLine(
        parts[0].decode(errors="replace"),
        stream.removesuffix(CONTINUED),
        parts[2].decode(errors="replace"),
        process,
        continued,
    )


Segment = tuple[bytes, bool]  # whole lines, each ending in a newline; True: one piece of a longer line


@dataclass
class LineCutter:
    """Output comes in pieces; lines come out whole, none longer than `max_line` bytes: a longer line
    comes out in pieces, each but the last marked as continued. A partial last line waits for its end,
    per stream, and is never more than `max_line` bytes, so each byte is looked at a bounded number of
    times whatever the output (no newline for a gigabyte included)."""

    max_line: int = MAX_LOG_LINE
    partial: dict[str, bytes] = field(default_factory=dict)

    def complete(self, stream: str, data: bytes) -> list[Segment]:
        """The lines that `data` finishes, as runs of whole lines and pieces of long ones."""
        if stream in self.partial:
            data = self.partial.pop(stream) + data
        segments: list[Segment] = []
        run = start = 0  # the run of whole lines not yet given out; the line being looked at
        while start + self.max_line < len(data):
            newline = data.rfind(b"\n", start, start + self.max_line + 1)
            if newline >= 0:  # every line up to it is short enough
                start = newline + 1
                continue
            if run < start:
                segments.append((data[run:start], False))
            cut = _character_boundary(data, start + self.max_line, start)
            segments.append((data[start:cut] + b"\n", True))
            run = start = cut
        last = data.rfind(b"\n", start)
        if last >= 0:
            start = last + 1
        if run < start:
            segments.append((data[run:start], False))
        if start < len(data):
            self.partial[stream] = data[start:]
        return segments

    def rest(self) -> list[tuple[str, bytes]]:
        """What is left at the end, each unfinished line given its newline."""
        left = [(stream, data + b"\n") for stream, data in self.partial.items()]
        self.partial.clear()
        return left


def _character_boundary(data: bytes, cut: int, start: int) -> int:
    """`cut`, moved back (three bytes at most) so that it does not split a UTF-8 character."""
    for candidate in range(cut, max(cut - 3, start + 1) - 1, -1):
        if data[candidate] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return candidate
    return cut


@dataclass(slots=True)
class LogCounts:
    """Since berthd started, over all process logs (for the metrics)."""

    bytes_written: int = 0
    lines_written: int = 0


@dataclass
class LogFile:
    """The log of one process: `NAME.log`, rotated to `NAME.log.1` ... `NAME.log.BACKUPS`."""

    path: Path
    max_bytes: int
    backups: int
    generation: int = 0
    lines_written: int = 0  # since this berthd opened the log
    first_line: dict[int, int] = field(default_factory=lambda: {0: 0})  # of the generations that exist
    counts: LogCounts = field(default_factory=LogCounts)  # the manager's, shared by all logs
    _size: int = -1
    _fd: int = -1
    _cutter: LineCutter = field(init=False)
    _changed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        # a line (a piece), its prefix included, always fits in a file of its own
        self._cutter = LineCutter(min(MAX_LOG_LINE, self.max_bytes // 2))

    def _open(self) -> None:
        if self._fd < 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._size = os.fstat(self._fd).st_size

    def path_of(self, generation: int) -> Path | None:
        """Where a generation's lines are now, or None when it was rotated away."""
        age = self.generation - generation
        if age == 0:
            return self.path
        if 0 < age <= self.backups:
            return self.path.with_name(f"{self.path.name}.{age}")
        return None

    def write(self, stream: str, data: bytes) -> None:
        """Output as it comes from a pipe: complete lines are logged, a partial one waits for its end."""
        for block, continued in self._cutter.complete(stream, data):
            self._append(stream, block, continued)

    def flush_partial(self) -> None:
        for stream, block in self._cutter.rest():
            self._append(stream, block)

    def note(self, text: str) -> None:
        """A line from berthd itself (a start, an exit) in the process's log."""
        self._append("berthd", text.encode()[: self._cutter.max_line].replace(b"\n", b" ") + b"\n")

    def _append(self, stream: str, block: bytes, continued: bool = False) -> None:
        """Whole lines, each ending in a newline: each gets the prefix and loses a \\r before its
        newline. Byte-level work over the block (replace, count, find), nothing per line in Python, and
        no copy of the whole just to add the first prefix: that goes in the same writev. What would
        take the file past `max_bytes` goes to the next file, cut at a line."""
        self._open()
        prefix = _timestamp() + b" " + (stream + CONTINUED if continued else stream).encode() + b" "
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        prefixed = block.replace(b"\n", b"\n" + prefix)  # ends with the prefix of a line yet to come
        view, end = memoryview(prefixed), len(prefixed) - len(prefix)
        head, start = prefix, 0  # the first line's prefix is not in `prefixed`
        while start < end:
            room = self.max_bytes - self._size - len(head)
            stop = end if end - start <= room else prefixed.rfind(b"\n", start, start + max(room, 0)) + 1
            if stop <= start:  # not one more line fits in this file
                if self._size > 0:
                    self._rotate()
                    continue
                stop = prefixed.index(b"\n", start) + 1  # a line larger than a file: lines are cut, so never
            written, lines = os.writev(self._fd, [head, view[start:stop]]), prefixed.count(b"\n", start, stop)
            self._size += written
            self.lines_written += lines
            self.counts.bytes_written += written
            self.counts.lines_written += lines
            head, start = b"", stop
            if self._size >= self.max_bytes:
                self._rotate()
        self._changed.set()
        self._changed = trio.Event()

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        if self.backups == 0:
            os.unlink(self.path)
        else:
            if oldest.exists():
                oldest.unlink()
            for age in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{age}")
                if older.exists():
                    older.rename(self.path.with_name(f"{self.path.name}.{age + 1}"))
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self.generation += 1
        self.first_line[self.generation] = self.lines_written
        self.first_line.pop(self.generation - self.backups - 1, None)  # rotated away
        self._open()

    async def changed(self) -> None:
        await self._changed.wait()

    def close(self) -> None:
        self.flush_partial()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def files_newest_first(self) -> list[Path]:
        files = [self.path] + [
            self.path.with_name(f"{self.path.name}.{age}") for age in range(1, self.backups + 1)
        ]
        return [f for f in files if f.exists()]


def tail_lines(files_newest_first: list[Path], count: int) -> list[bytes]:
    """The last `count` lines over the files, reading blocks backwards from the end: never whole files."""
    lines: list[bytes] = []
    for path in files_newest_first:
        need = count - len(lines)
        if need <= 0:
            break
        lines = _tail_of_file(path, need) + lines
    return lines[-count:] if count else []


def _tail_of_file(path: Path, count: int) -> list[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        return tail_of_descriptor(fd, os.fstat(fd).st_size, count)
    finally:
        os.close(fd)


def tail_of_descriptor(fd: int, end: int, count: int) -> list[bytes]:
    """The last `count` lines of an open file that end by `end`, read in blocks backwards from there."""
    position = end
    chunks: list[bytes] = []
    newlines = 0
    while position > 0 and newlines <= count:
        size = min(READ_BLOCK, position)
        position -= size
        chunk = os.pread(fd, size, position)
        chunks.insert(0, chunk)
        newlines += chunk.count(b"\n")
    data = b"".join(chunks)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if position > 0:
        lines = lines[1:]  # the first piece may be the end of a longer line
    return lines[-count:] if count > 0 else []


@dataclass
class Missed:
    count: int


async def follow(log: LogFile, start_at_end: bool = True) -> AsyncIterator[list[bytes] | Missed]:
    """New lines of a log as they are written, in order, across rotations. Lines are counted as they
    go (`seen`, on the log's own count), so the lines of generations rotated away unread are the
    difference to where the next generation that exists begins: nothing kept per generation gone."""
    generation = log.generation
    path = log.path_of(generation)
    assert path is not None
    log._open()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    position = os.fstat(fd).st_size if start_at_end else 0
    seen = log.lines_written if start_at_end else log.first_line[generation]
    partial = b""
    try:
        while True:
            data = os.pread(fd, READ_BLOCK * 4, position)
            if data:
                position += len(data)
                data = partial + data
                cut = data.rfind(b"\n")
                partial = data[cut + 1 :]
                if cut >= 0:
                    lines = data[:cut].split(b"\n")
                    seen += len(lines)
                    yield lines
                continue
            if log.generation > generation:
                # our file was rotated and fully read: go on with the next generation that still exists
                os.close(fd)
                fd = -1
                generation += 1
                while (next_path := log.path_of(generation)) is None:
                    generation += 1
                missed, seen = max(0, log.first_line[generation] - seen), log.first_line[generation]
                if missed:
                    yield Missed(missed)
                fd = os.open(next_path, os.O_RDONLY | os.O_CLOEXEC)
                position, partial = 0, b""
                continue
            await log.changed()
    finally:
        if fd >= 0:
            os.close(fd)


class EventBacklog:
    """Log events on their way to one client, held up to `max_bytes`: what does not fit is counted,
    and the next event that fits carries the count (`missed`), so a client that does not read holds
    a bounded amount of berthd's memory and never slows the process down."""

    def __init__(self, app: str, process: str, max_bytes: int = EVENT_BACKLOG_BYTES) -> None:
        self.app, self.process, self.max_bytes = app, process, max_bytes
        self.missed = 0  # lines the client will be told it missed
        self._events: deque[LogEvent] = deque()
        self._bytes = 0
        self._closed = False
        self._client_left = False
        self._arrived = trio.Event()

    def offer(self, stream: str, line: str, continued: bool = False) -> None:
        if self._bytes >= self.max_bytes:
            self.missed += 1
            return
        self._push(LogEvent(self.app, self.process, stream, line, self.missed, continued))

    def offer_block(self, stream: str, block: bytes, continued: bool = False) -> None:
        """Whole lines (each ending in a newline), decoded only while they fit: a full backlog costs
        a count of newlines, nothing per line."""
        if self._bytes >= self.max_bytes:
            self.missed += block.count(b"\n")
            return
        lines = block.decode("utf-8", "replace").split("\n")[:-1]
        for index, line in enumerate(lines):
            if self._bytes >= self.max_bytes:
                self.missed += len(lines) - index
                return
            self._push(
                LogEvent(self.app, self.process, stream, line.removesuffix("\r"), self.missed, continued)
            )

    def tell(self, line: str) -> None:
        """A line from berthd itself (output cut, lines missed): held whatever the limit (it is one
        short line, once), after what came before it, with the count of lines missed so far."""
        self._push(LogEvent(self.app, self.process, "berthd", line, self.missed))

    def _push(self, event: LogEvent) -> None:
        if self._client_left or self._closed:
            return
        self.missed = 0
        self._events.append(event)
        self._bytes += EVENT_COST + len(event.line)
        self._arrived.set()

    def close(self) -> None:
        """No more events; a count of missed lines not told yet comes in a last event of its own."""
        if self.missed:
            self.tell(f"{self.missed} lines missed: the client did not read fast enough")
        self._closed = True
        self._arrived.set()

    async def deliver(self, emit: Callable[[LogEvent], Awaitable[None]]) -> None:
        """Until closed and empty: the events, in order, at the client's pace."""
        while True:
            while self._events:
                event = self._events.popleft()
                self._bytes -= EVENT_COST + len(event.line)
                try:
                    await emit(event)
                except Exception:  # noqa: BLE001 - the client left; what it asked for goes on without it
                    self._client_left = True
                    self._events.clear()
                    return
            if self._closed:
                return
            self._arrived = trio.Event()
            await self._arrived.wait()
