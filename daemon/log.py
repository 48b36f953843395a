"""The daemon log: to stderr and optionally a file. Each command, its caller and its answer, redacted."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOG = logging.getLogger("berthd")
COMMAND_LOG = logging.getLogger("berthd.command")
FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str, log_file: str | None) -> None:
    root = logging.getLogger("berthd")
    root.setLevel(level.upper())
    root.handlers.clear()
    formatter = logging.Formatter(FORMAT, "%Y-%m-%dT%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.propagate = False
