"""The audit log: one JSON line for each command that reaches the dispatcher, for root to read.

A line holds the time (UTC, to the millisecond), the caller as SO_PEERCRED and the system name it
(`Peer.describe`), the command, its arguments as the dispatcher redacted them (secrets `***`, URLs
without their user and password: the raw arguments never come here), the result (`ok` or the error
code), the duration in ms, and `rule` when the access rules decided. A line that names no command
(too long, not a request) or whose arguments were not understood carries a placeholder string where
the list of arguments would be.

The file is berthd's: opened `O_NOFOLLOW` (a link at its path is refused, never followed), mode 0600
from the first instant, `O_APPEND | O_CLOEXEC`, and must be a regular file of berthd's own user with
no other name. It is rotated by size as berthd's log is (`RotatingFile`). A line is one `write(2)` on
the event loop: an append to the page cache, which never waits on the disk and is cheaper than a hop
to a worker thread. A write that fails (a full disk) is reported once in berthd's log, never to the
command, and once more when writing works again, with the count of lines lost.

Followers (`audit:tail --follow`) read the file at their own pace, are woken by each line, follow it
across rotations (one that fell behind reads each rotated file still kept, in order), and all end when
berthd shuts down.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import trio

from berthd.log import LOG, RotatingFile, open_appending
from berthd.server.peercred import Peer
from berthd.supervision.logs import READ_BLOCK, tail_lines, tail_of_descriptor

AUDIT_FILE_MODE = 0o600
_EXTRA_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK  # O_NONBLOCK: a FIFO at the path cannot hold up the open
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
CALLERS_KEPT = 4096  # encoded callers remembered at most (a Peer is one process of one user)
MAX_PARTIAL = 1024 * 1024  # a follower keeps no more of a line without its end (none is ever that long)


class AuditLogError(Exception):
    """The audit log cannot be opened as it must be: berthd does not start."""


Args = Sequence[str] | str  # a string: why the arguments are not shown


class AuditEntry(msgspec.Struct, omit_defaults=True):
    time: str
    caller: msgspec.Raw  # Peer.describe(), encoded once for each caller
    command: str
    args: Args
    result: str
    duration_ms: float
    rule: str | None = None


def open_audit_file(path: str) -> int:
    """The audit file for appending, made or checked to be what it must be (see the module's doc)."""
    try:
        fd = open_appending(path, AUDIT_FILE_MODE, _EXTRA_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AuditLogError(f"the audit log {path} is a symbolic link: refused") from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, a socket
            raise AuditLogError(f"the audit log {path} is refused: it is not a regular file") from None
        raise AuditLogError(f"cannot open the audit log {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    why = None
    if not stat.S_ISREG(info.st_mode):
        why = "it is not a regular file"
    elif info.st_uid != os.geteuid():
        why = f"it belongs to uid {info.st_uid}, not to berthd's"
    elif info.st_nlink != 1:
        why = f"it has {info.st_nlink} names (hard links)"
    if why is not None:
        os.close(fd)
        raise AuditLogError(f"the audit log {path} is refused: {why}")
    return fd


class AuditLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = RotatingFile(str(path), open_audit_file, max_bytes, backups, report=LOG.error)
        self._encoder = msgspec.json.Encoder()
        self._second = -1
        self._stamp = ""
        self._callers: dict[Peer, msgspec.Raw] = {}
        self.lost = 0  # lines not written since writing last failed
        self._changed: trio.Event | None = None  # made by a follower that waits, set by the next line
        self.stopping = False

    def record(self, peer: Peer, command: str, args: Args, result: str, ms: float, rule: str | None) -> None:
        """One line; a failure to write it is berthd's to report, not the command's."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = AuditEntry(
            f"{self._stamp}.{int(now % 1 * 1000):03d}Z",
            self._caller(peer),
            command,
            args,
            result,
            int(ms * 1000) / 1000,  # to the microsecond (round() costs as much as the write)
            rule,
        )
        line = self._encoder.encode(entry) + b"\n"
        try:
            self._file.write(line)
        except OSError as exc:
            if not self.lost:
                LOG.error("cannot write the audit log %s: %s; commands go on unaudited", self.path, exc)
            self.lost += 1
            return
        if self.lost:
            LOG.warning("the audit log %s is written again; %d lines were lost", self.path, self.lost)
            self.lost = 0
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _caller(self, peer: Peer) -> msgspec.Raw:
        encoded = self._callers.get(peer)
        if encoded is None:
            if len(self._callers) >= CALLERS_KEPT:
                self._callers.clear()
            encoded = self._callers[peer] = msgspec.Raw(self._encoder.encode(peer.describe()))
        return encoded

    def files_newest_first(self) -> list[Path]:
        return [Path(name) for name in self._file.files_newest_first()]

    def tail(self, count: int, fd: int, end: int) -> list[bytes]:
        """The last `count` lines: those of the current file (open as `fd`) that end by `end`, and the
        rotated files' before them. Blocks backwards from the end: never a whole file."""
        lines = tail_of_descriptor(fd, end, count)
        if len(lines) < count:
            lines = tail_lines(self.files_newest_first()[1:], count - len(lines)) + lines
        return lines

    def open_current(self) -> tuple[int, int]:
        """The current file, for reading, and its size now: where a follower starts."""
        fd = os.open(self.path, _READ_FLAGS)
        return fd, os.fstat(fd).st_size

    async def follow(self, fd: int, position: int, deliver: Callable[[list[bytes]], Awaitable[None]]) -> None:
        """The lines written after `position` of the file open as `fd` (which this closes), in order
        and across rotations, until berthd stops."""
        partial = b""
        try:
            while not self.stopping:
                data = os.pread(fd, READ_BLOCK, position)
                if data:
                    position += len(data)
                    data = partial + data
                    cut = data.rfind(b"\n")
                    partial = data[cut + 1 :][-MAX_PARTIAL:]
                    if cut >= 0:
                        await deliver(data[:cut].split(b"\n"))
                    continue
                following = self._written_after(os.fstat(fd).st_ino)
                if following is None:
                    await self._next_line()
                    continue
                os.close(fd)
                fd = -1  # (rotation runs on this thread too: what was just found is still there)
                fd, position, partial = os.open(following, _READ_FLAGS), 0, b""
        finally:
            if fd >= 0:
                os.close(fd)

    def _written_after(self, inode: int) -> Path | None:
        """The file whose lines come after those of the file `inode` once it was rotated: the next newer
        one, or the oldest one kept when it was rotated away altogether (lines between are lost). None
        while it is the newest."""
        kept: list[Path] = []  # newest first
        for path in self.files_newest_first():
            try:
                if os.stat(path, follow_symlinks=False).st_ino == inode:
                    return kept[-1] if kept else None
            except FileNotFoundError:
                continue
            kept.append(path)
        return kept[-1] if kept else None

    async def _next_line(self) -> None:
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def stop_following(self) -> None:
        """berthd is stopping: every follower ends (writing goes on, for the last commands)."""
        self.stopping = True
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def close(self) -> None:
        self.stop_following()
        self._file.close()
