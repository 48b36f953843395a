"""sd_notify: tell systemd (Type=notify) when berthd is ready and when it stops."""

from __future__ import annotations

import os
import socket

# Taken out of the environment at import, so no child of berthd talks to systemd in berthd's name.
_ADDRESS = os.environ.pop("NOTIFY_SOCKET", None)


def sd_notify(state: str) -> bool:
    address = _ADDRESS
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
