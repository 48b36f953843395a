"""The listening socket: adopted from systemd (LISTEN_FDS), or bound with the right owner and mode.

A fresh socket is bound under a temporary name while the umask keeps it private, given its group and
mode, then renamed over the final path, so no client ever sees it with the wrong permissions.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

SD_LISTEN_FDS_START = 3


class ListenerError(Exception):
    pass


@dataclass
class Listener:
    sock: socket.socket
    path: Path | None  # None when the socket came from systemd: it owns the file
    inode: int | None = None

    def remove(self) -> None:
        """Unlink our socket file, unless something else has replaced it since."""
        if self.path is None:
            return
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def adopt_systemd_socket(environ: dict[str, str]) -> socket.socket | None:
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ListenerError("the socket passed by systemd is not a UNIX stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ListenerError("the socket passed by systemd is not listening (Accept=yes is not supported)")
    for extra in range(SD_LISTEN_FDS_START + 1, SD_LISTEN_FDS_START + count):
        with contextlib.suppress(OSError):
            os.close(extra)
    os.set_inheritable(sock.fileno(), False)
    return sock


def _someone_listens(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ListenerError(f"cannot check the existing socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    return True


def bind_socket(path: Path, mode: int, group: str | None, backlog: int = 512) -> Listener:
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ListenerError(f"no group {group!r} for the socket") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ListenerError(f"{path} exists and is not a socket; not replacing it")
        if _someone_listens(path):
            raise ListenerError(f"another berthd is already listening on {path}")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(temporary))
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    try:
        if gid != -1:
            os.chown(temporary, -1, gid)
        os.chmod(temporary, mode)
        sock.listen(backlog)
        os.rename(temporary, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise ListenerError(f"cannot set up {path}: {exc.strerror}") from None
    return Listener(sock, path, os.stat(path).st_ino)


def open_listener(path: Path, mode: int, group: str | None) -> Listener:
    adopted = adopt_systemd_socket(dict(os.environ))
    if adopted is not None:
        return Listener(adopted, None)
    return bind_socket(path, mode, group)
