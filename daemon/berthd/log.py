"""The daemon log: to stderr and optionally a file. Each command, its caller and its answer, redacted.

Command lines, one per request, take a short path (one formatted string, one `write` per destination,
no logging-module machinery): at thousands of commands a second the log must not be what is slow.
Everything else goes through `logging` to the same places, in the same format, with any URL's user
and password removed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from berthd.server.redaction import without_credentials

LOG = logging.getLogger("berthd")
COMMAND_LOGGER = "berthd.command"
FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class CommandLog:
    def __init__(self) -> None:
        self.enabled = True
        self._fds: list[int] = [sys.stderr.fileno()]
        self._second = 0
        self._stamp = ""

    def configure(self, enabled: bool, log_file: str | None) -> None:
        self.enabled = enabled
        for fd in self._fds[1:]:
            os.close(fd)
        self._fds = [sys.stderr.fileno()]
        if log_file:
            self._fds.append(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640))

    def write(self, message: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(DATE_FORMAT, time.localtime(now))
        line = f"{self._stamp}.{int(now % 1 * 1000):03d} INFO {COMMAND_LOGGER}: {message}\n".encode()
        for fd in self._fds:
            try:  # noqa: SIM105 - the hot path; suppress() costs a context manager per write
                os.write(fd, line)
            except OSError:
                pass  # a full disk or a closed stderr must not take a command down with it


COMMAND_LOG = CommandLog()


class RedactingFormatter(logging.Formatter):
    """The log's format; a URL's user and password never reach the log, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return without_credentials(super().format(record))


def setup_logging(level: str, log_file: str | None) -> None:
    root = logging.getLogger("berthd")
    root.setLevel(level.upper())
    root.handlers.clear()
    formatter = RedactingFormatter(FORMAT, DATE_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.propagate = False
    COMMAND_LOG.configure(root.isEnabledFor(logging.INFO), log_file)
