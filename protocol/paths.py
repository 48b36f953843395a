"""Where berthd's socket is by default: one rule, shared by the daemon and its clients."""

from __future__ import annotations

import os
from pathlib import Path


def default_socket_path() -> Path:
    explicit = os.environ.get("BERTHD_SOCK_PATH")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/run/berthd/berthd.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/berthd-{os.geteuid()}"
    return Path(runtime) / "berthd" / "berthd.sock"
