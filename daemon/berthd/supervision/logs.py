"""Process logs: one size-rotated file per process, read backwards for a tail, followed across rotations.

Each line is stored as `TIMESTAMP STREAM TEXT`. Writers append to the page cache on the event loop (an
append is cheaper than a hop to a worker thread and never waits on the disk). Followers read the files
at their own pace, so a slow follower never holds up the process or the other followers; when a
follower falls so far behind that files it still needed were rotated away, it is told how many lines
it missed.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

READ_BLOCK = 65536


@dataclass(frozen=True, slots=True)
class LogLine:
    timestamp: str
    stream: str
    text: str
    process: str = ""


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
    return LogLine(
        parts[0].decode(errors="replace"),
        parts[1].decode(errors="replace"),
        parts[2].decode(errors="replace"),
        process,
    )


@dataclass
class LineCutter:
    """Output comes in pieces; lines come out whole. A partial last line waits for its end, per stream."""

    partial: dict[str, bytes] = field(default_factory=dict)

    def complete(self, stream: str, data: bytes) -> bytes:
        """The complete lines (with their newlines) that `data` finishes, or b\"\"."""
        data = self.partial.pop(stream, b"") + data
        cut = data.rfind(b"\n")
        if cut + 1 < len(data):
            self.partial[stream] = data[cut + 1 :]
        return data[: cut + 1]

    def rest(self) -> list[tuple[str, bytes]]:
        """What is left at the end, each unfinished line given its newline."""
        left = [(stream, data + b"\n") for stream, data in self.partial.items()]
        self.partial.clear()
        return left


@dataclass
class LogFile:
    """The log of one process: `NAME.log`, rotated to `NAME.log.1` ... `NAME.log.BACKUPS`."""

    path: Path
    max_bytes: int
    backups: int
    generation: int = 0
    lines_per_generation: dict[int, int] = field(default_factory=dict)
    _size: int = -1
    _fd: int = -1
    _cutter: LineCutter = field(default_factory=LineCutter)
    _changed: trio.Event = field(default_factory=trio.Event)

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
        block = self._cutter.complete(stream, data)
        if block:
            self._append(stream, block)

    def flush_partial(self) -> None:
        for stream, block in self._cutter.rest():
            self._append(stream, block)

    def note(self, text: str) -> None:
        """A line from berthd itself (a start, an exit) in the process's log."""
        self._append("berthd", text.encode() + b"\n")

    def _append(self, stream: str, block: bytes) -> None:
        """Whole lines, each ending in a newline: each gets the prefix and loses a \\r before its
        newline. Byte-level work over the block (replace, count), nothing per line in Python, and no
        copy of the whole just to add the first prefix: that goes in the same writev."""
        self._open()
        prefix = _timestamp() + b" " + stream.encode() + b" "
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        prefixed = block.replace(b"\n", b"\n" + prefix)  # ends with the prefix of a line yet to come
        self._size += os.writev(self._fd, [prefix, memoryview(prefixed)[: -len(prefix)]])
        count = self.lines_per_generation.get(self.generation, 0) + block.count(b"\n")
        self.lines_per_generation[self.generation] = count
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
        for gone in [g for g in self.lines_per_generation if g < self.generation - self.backups - 100_000]:
            del self.lines_per_generation[gone]
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
        end = os.fstat(fd).st_size
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
    finally:
        os.close(fd)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if position > 0:
        lines = lines[1:]  # the first piece may be the end of a longer line
    return lines[-count:]


@dataclass
class Missed:
    count: int


async def follow(log: LogFile, start_at_end: bool = True) -> AsyncIterator[list[bytes] | Missed]:
    """New lines of a log as they are written, in order, across rotations."""
    generation = log.generation
    path = log.path_of(generation)
    assert path is not None
    log._open()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    position = os.fstat(fd).st_size if start_at_end else 0
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
                    yield data[:cut].split(b"\n")
                continue
            if log.generation > generation:
                # our file was rotated and fully read: go on with the next generation that still exists
                os.close(fd)
                fd = -1
                generation += 1
                missed = 0
                while (next_path := log.path_of(generation)) is None:
                    missed += log.lines_per_generation.get(generation, 0)
                    generation += 1
                if missed:
                    yield Missed(missed)
                fd = os.open(next_path, os.O_RDONLY | os.O_CLOEXEC)
                position, partial = 0, b""
                continue
            await log.changed()
    finally:
        if fd >= 0:
            os.close(fd)
