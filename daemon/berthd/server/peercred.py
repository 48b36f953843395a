"""Who is on the other end of a UNIX socket (SO_PEERCRED)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"uid={self.uid} pid={self.pid}"


UNKNOWN_PEER = Peer(-1, -1, -1)


def peer_of(sock: socket.socket) -> Peer:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return UNKNOWN_PEER
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid)
