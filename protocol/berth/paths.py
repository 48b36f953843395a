"""Where berthd's socket is by default: one rule, shared by the daemon and its clients."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_SOCKET = Path("/run/berthd/berthd.sock")


def client_socket_path() -> Path:
    """The daemon's default, or the system-wide socket when there is no per-user one."""
    path = default_socket_path()
    if not os.environ.get("BERTHD_SOCK_PATH") and not path.exists() and SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return path


def default_socket_path() -> Path:
    explicit = os.environ.get("BERTHD_SOCK_PATH")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/run/berthd/berthd.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/berthd-{os.geteuid()}"
    return Path(runtime) / "berthd" / "berthd.sock"
