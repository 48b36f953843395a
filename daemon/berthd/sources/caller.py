"""Reading a local file or git repository with the caller's rights, not berthd's.

berthd runs as root for callers who are not. A check of modes before opening is not enough: the folders
above a file count too, and whatever the path names can change between the check and the open. So the
kernel checks, as the caller:

- A file is opened by a short-lived child that takes the caller's uid, gid and groups first. It is forked
  without an exec, because the program exec'd would itself have to be reachable by the caller (berthd's
  interpreter often is not, say under /root); the child only changes its credentials, opens, passes the
  descriptor back over a socketpair (SCM_RIGHTS) and exits. Having dropped root without an exec, it is
  not dumpable, so the caller cannot ptrace it or read the descriptors it inherited from berthd. berthd
  then `fstat`s what it received, which must be a regular file. Root callers open directly.
- git reads a local (`file://`) repository through `git upload-pack` run by `setpriv` as the caller,
  so every object berthd receives was read with the caller's rights.

Failures read the same whether the path is missing or forbidden: a caller learns nothing about paths it
may not read.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import socket
import stat
from dataclasses import dataclass

from berthd.server.peercred import Peer

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # a FIFO must not block the open
OPEN_TIMEOUT = 10.0
MAX_FD = 1 << 20  # above any descriptor berthd can have (closerange uses close_range(2))


class NotReadable(ValueError):
    """The caller cannot read that path, or it is not there: one answer for both."""


@dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, peer: Peer) -> Caller:
        """The peer's uid and gid (SO_PEERCRED), and the groups its user belongs to (as the server
        read them when the client connected)."""
        return cls(peer.uid, peer.gid, peer.groups or (peer.gid,))

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def not_readable(shown: str) -> NotReadable:
    return NotReadable(f"{shown}: there is no such file, or you may not read that file")


def open_file(caller: Caller, path: str, shown: str) -> int:
    """A descriptor of the regular file at `path`, opened as `caller` would open it."""
    if caller.is_root:
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ELOOP):
                raise not_readable(shown) from None
            raise NotReadable(f"cannot read {shown}: {exc.strerror}") from None
    else:
        fd = _open_in_child(caller, path)
        if fd < 0:
            raise not_readable(shown)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotReadable(f"cannot read {shown}: not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_executable_as(caller: Caller, path: str) -> None:
    """The caller could run the program at `path`: every folder on the way searched, and the file itself
    a regular file it may execute, judged with the caller's rights (a caller other than root learns
    nothing about paths it may not reach: one answer for missing and forbidden)."""
    if caller.is_root:
        return
    fd = _open_in_child(caller, path, os.O_PATH | os.O_CLOEXEC)
    if fd < 0:
        raise NotReadable(f"invalid executable {path!r}: there is no such file, or you may not run it")
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if info.st_uid == caller.uid:
        bit = stat.S_IXUSR
    elif info.st_gid in caller.groups:
        bit = stat.S_IXGRP
    else:
        bit = stat.S_IXOTH
    if not stat.S_ISREG(info.st_mode) or not info.st_mode & bit:
        raise NotReadable(f"invalid executable {path!r}: there is no such file, or you may not run it")


def _open_in_child(caller: Caller, path: str, flags: int = OPEN_FLAGS) -> int:
    """The descriptor the child opened as the caller, or -1 when it could not."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        pid = os.fork()
        if pid == 0:  # the child: nothing here may take a lock another thread of berthd could hold
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                # none of berthd's descriptors (database, logs, another deploy's archive) and not its
                # working directory: /proc/self/fd/N and /proc/self/cwd would open them for the caller
                keep = theirs.fileno()
                os.closerange(0, keep)
                os.closerange(keep + 1, MAX_FD)
                os.chdir("/")
                os.setgroups(list(caller.groups))
                os.setresgid(caller.gid, caller.gid, caller.gid)
                os.setresuid(caller.uid, caller.uid, caller.uid)
                try:
                    fd = os.open(path, flags)
                except OSError:
                    theirs.sendall(b"-")
                else:
                    socket.send_fds(theirs, [b"+"], [fd])
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        try:
            ours.settimeout(OPEN_TIMEOUT)
            message, fds, _, _ = socket.recv_fds(ours, 1, 1)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            message, fds = b"", []
        finally:
            os.waitpid(pid, 0)
    if message == b"+" and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    return -1


def upload_pack(caller: Caller) -> str | None:
    """The `--upload-pack` command for a local repository: `git upload-pack` as the caller (None for root).
    git runs it through the shell (appending the repository's path), so every word is quoted."""
    if caller.is_root:
        return None
    setpriv, git = shutil.which("setpriv"), shutil.which("git")
    if setpriv is None or git is None:
        raise NotReadable("berthd cannot read a local repository as you: setpriv (util-linux) is missing")
    groups = f"--groups={','.join(map(str, caller.groups))}" if caller.groups else "--clear-groups"
    words = [setpriv, f"--reuid={caller.uid}", f"--regid={caller.gid}", groups, "--no-new-privs", "--",
             git, "upload-pack"]  # fmt: skip
    # from / and not from git's working directory, which /proc/self/cwd would open as the caller
    return "cd / && exec " + " ".join(shlex.quote(word) for word in words)
