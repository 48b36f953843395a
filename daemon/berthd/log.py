"""The daemon log: to stderr and optionally a file. Each command, its caller and its answer, redacted.

Command lines, one per request, take a short path (one formatted string, one `write` per destination,
no logging-module machinery): at thousands of commands a second the log must not be what is slow.
Everything else goes through `logging` to the same `LogSink`, in the same format, with any URL's user
and password removed.

The file is opened once, by the sink, with its mode (0640) from the first instant and close-on-exec, and
rotated by size: FILE becomes FILE.1 (FILE.1 becomes FILE.2 ...), and a new FILE is opened and `dup2`ed
onto the same descriptor number. A writer on another thread (logging from a worker thread) writes either
to the old file or to the new one, never to a closed descriptor, so writing needs no lock.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from pathlib import Path

from berthd.server.redaction import without_credentials

LOG = logging.getLogger("berthd")
COMMAND_LOGGER = "berthd.command"
FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
LOG_FILE_MODE = 0o640
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
NO_FILE_ROOM = 1 << 62  # stderr alone is never rotated


def open_log_file(path: str) -> int:
    """FILE for appending. A new one is 0640 (created no wider: the umask may only take away, and berthd's
    own umask, 077 once it runs, is put back to 0640 at once); one left wider by an older berthd is narrowed."""
    try:
        fd = os.open(path, _OPEN_FLAGS | os.O_EXCL, LOG_FILE_MODE)
        os.fchmod(fd, LOG_FILE_MODE)
    except FileExistsError:
        fd = os.open(path, _OPEN_FLAGS, LOG_FILE_MODE)
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & ~LOG_FILE_MODE:
            os.fchmod(fd, mode & LOG_FILE_MODE)
    return fd


class LogSink:
    """stderr and the log file: whole lines, one `write(2)` each, the file rotated by size."""

    def __init__(self) -> None:
        self._fds: list[int] = [sys.stderr.fileno()]
        self._path: str | None = None
        self._fd = -1
        self._room = NO_FILE_ROOM  # bytes until the file is rotated
        self._max_bytes = DEFAULT_MAX_BYTES
        self._backups = DEFAULT_BACKUPS
        self._rotating = threading.Lock()

    def configure(self, log_file: str | None, max_bytes: int, backups: int) -> None:
        self.close()
        self._max_bytes, self._backups = max_bytes, backups
        if log_file:
            self._path = log_file
            self._fd = open_log_file(log_file)
            self._room = max_bytes - os.fstat(self._fd).st_size
            self._fds.append(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fds, self._path, self._fd, self._room = [sys.stderr.fileno()], None, -1, NO_FILE_ROOM

    def write(self, line: bytes) -> None:
        for fd in self._fds:
            try:  # noqa: SIM105 - the hot path; suppress() costs a context manager per write
                os.write(fd, line)
            except OSError:
                pass  # a full disk or a closed stderr must not take a command down with it
        # one subtraction a line; a count lost between threads only moves the next rotation a little
        self._room -= len(line)
        if self._room <= 0:
            self._rotate()

    def _rotate(self) -> None:
        if self._path is None or not self._rotating.acquire(blocking=False):
            return  # another thread is rotating: this line went to the old file
        try:
            self._room = self._max_bytes  # also when rotating fails: try again later, not at each line
            path = self._path
            for index in range(self._backups - 1, 0, -1):
                if os.path.lexists(f"{path}.{index}"):
                    os.replace(f"{path}.{index}", f"{path}.{index + 1}")
            if self._backups:
                os.replace(path, f"{path}.1")
            else:
                os.unlink(path)
            fresh = open_log_file(path)
            try:
                os.dup2(fresh, self._fd, inheritable=False)
            finally:
                os.close(fresh)
        except OSError as exc:
            message = f"cannot rotate the log file {self._path}: {exc}; writing on\n"
            os.write(sys.stderr.fileno(), message.encode(errors="replace"))
        finally:
            self._rotating.release()


SINK = LogSink()


class CommandLog:
    def __init__(self, sink: LogSink) -> None:
        self.enabled = True
        self._sink = sink
        self._second = 0
        self._stamp = ""

    def write(self, message: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(DATE_FORMAT, time.localtime(now))
        self._sink.write(
            f"{self._stamp}.{int(now % 1 * 1000):03d} INFO {COMMAND_LOGGER}: {message}\n".encode()
        )


COMMAND_LOG = CommandLog(SINK)


class RedactingFormatter(logging.Formatter):
    """The log's format; a URL's user and password never reach the log, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return without_credentials(super().format(record))


class SinkHandler(logging.Handler):
    """The logging module's way into the sink: the same descriptors, the same rotation."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write((self.format(record) + "\n").encode(errors="replace"))
        except Exception:  # noqa: BLE001 - as every logging handler: a record that cannot be written is reported
            self.handleError(record)


def setup_logging(
    level: str,
    log_file: str | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
) -> None:
    root = logging.getLogger("berthd")
    root.setLevel(level.upper())
    root.handlers.clear()
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    SINK.configure(log_file, max_bytes, backups)
    handler = SinkHandler(SINK)
    handler.setFormatter(RedactingFormatter(FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.propagate = False
    COMMAND_LOG.enabled = root.isEnabledFor(logging.INFO)


def set_log_level(level: str) -> None:
    """A new level while berthd runs (SIGHUP)."""
    root = logging.getLogger("berthd")
    root.setLevel(level.upper())
    COMMAND_LOG.enabled = root.isEnabledFor(logging.INFO)
