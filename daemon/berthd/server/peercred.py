"""Who is on the other end of a UNIX socket: SO_PEERCRED's pid, uid and gid, and what the system says
they are called and which groups the user is in.

The kernel's answer is taken once, when the client connects (it describes the process that called
`connect`). The names and groups come from the system's user database (NSS: files, LDAP, ...), read
off the event loop and kept for `NAMES_TTL` seconds, so that a change of membership counts for the next
connection soon, and a flood of connections costs one lookup, not one each. A uid the host does not know
(a container's user) keeps its numbers: no name, its own gid as its only group.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass, replace

import trio

_UCRED = struct.Struct("3i")
NAMES_TTL = 5.0  # seconds a uid's names and groups are trusted before they are read again
NAMES_KEPT = 4096  # (uid, gid) pairs remembered at most


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    user: str | None = None  # None: a uid the host has no account for
    group: str | None = None
    groups: tuple[int, ...] = ()  # every group the caller counts as a member of, its gid first
    group_names: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"uid={self.uid} pid={self.pid}"

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def describe(self) -> dict[str, object]:
        """The identity as `whoami` and the audit log show it."""
        return {
            "uid": self.uid,
            "gid": self.gid,
            "pid": self.pid,
            "user": self.user,
            "group": self.group,
            "groups": list(self.group_names),
            "gids": list(self.groups),
        }


UNKNOWN_PEER = Peer(-1, -1, -1)


def peer_of(sock: socket.socket) -> Peer:
    """The kernel's pid, uid and gid of the client (names not looked up yet: see `PeerNames`)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return UNKNOWN_PEER
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid, groups=(gid,))


@dataclass(frozen=True, slots=True)
class _Names:
    user: str | None
    group: str | None
    groups: tuple[int, ...]
    group_names: tuple[str, ...]


def _look_up(uid: int, gid: int) -> _Names:
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        user = None
    gids = [gid]
    if user is not None:
        gids += [g for g in os.getgrouplist(user, gid) if g != gid]
    names = []
    for g in gids:
        try:
            names.append(grp.getgrgid(g).gr_name)
        except (KeyError, OverflowError):
            names.append(str(g))
    return _Names(user, names[0] if gid >= 0 else None, tuple(gids), tuple(names))


class PeerNames:
    """The system's names for callers, each looked up at most once every `NAMES_TTL` seconds."""

    def __init__(self, ttl: float = NAMES_TTL) -> None:
        self.ttl = ttl
        self._known: dict[tuple[int, int], tuple[float, _Names]] = {}

    async def identify(self, peer: Peer) -> Peer:
        if peer.uid < 0:
            return peer
        key = (peer.uid, peer.gid)
        now = time.monotonic()
        kept = self._known.get(key)
        if kept is None or kept[0] < now:
            names = await trio.to_thread.run_sync(_look_up, peer.uid, peer.gid)
            if len(self._known) >= NAMES_KEPT:
                self._known.clear()
            self._known[key] = (now + self.ttl, names)
        else:
            names = kept[1]
            if (
                peer.groups == names.groups
                and peer.user == names.user
                and peer.group_names == names.group_names
            ):
                return peer  # the common case, once a connection's caller is known: nothing to make
        return replace(
            peer, user=names.user, group=names.group, groups=names.groups, group_names=names.group_names
        )
