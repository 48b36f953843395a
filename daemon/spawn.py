"""The one place berthd starts a process.

Every child gets its own session (so its whole process group can be signalled), pipes for its
output, never a shell, and PR_SET_PDEATHSIG=SIGKILL so it dies with berthd even when berthd is killed
with SIGKILL. The death signal is tied to the *thread* that forks, so all forks happen on one spawner
thread that lives as long as berthd; trio's worker threads come and go and would kill children when
they retire. Waiting for a child uses a pidfd, so nothing polls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import pwd
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl


class SpawnError(Exception):
    """The process could not be started; the message is for people."""


@dataclass(frozen=True)
class Identity:
    """Whom a child runs as: a user, its group (or the one given) and the user's other groups."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def resolve(cls, spec: str) -> Identity:
        name, _, group = spec.partition(":")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SpawnError(f"no user {name!r} on this host") from None
        gid = entry.pw_gid
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise SpawnError(f"no group {group!r} on this host") from None
        groups = tuple(os.getgrouplist(name, gid))
        return cls(name, entry.pw_uid, gid, groups, entry.pw_dir)


def check_identity(spec: str | None) -> Identity | None:
    """The identity to switch to, None to stay as berthd; refused when berthd cannot switch."""
    if not spec:
        return None
    identity = Identity.resolve(spec)
    if os.geteuid() == 0:
        return identity
    if identity.uid == os.geteuid() and identity.gid in os.getgroups() + [os.getegid()]:
        return None
    raise SpawnError(f"cannot run as {spec}: berthd is not running as root")


@dataclass
class SpawnRequest:
    argv: Sequence[str]
    cwd: str | None
    env: Mapping[str, str]
    identity: Identity | None = None
    stdin: bool = False


@dataclass
class Child:
    """A started process: its pid (also its process group), pipes and a pidfd to wait on."""

    pid: int
    popen: subprocess.Popen[bytes]
    stdout: trio.lowlevel.FdStream
    stderr: trio.lowlevel.FdStream
    stdin: trio.lowlevel.FdStream | None
    pidfd: int
    returncode: int | None = None
    _reaped: trio.Event = field(default_factory=trio.Event)

    async def watch(self) -> None:
        """The one task that waits on the pidfd and reaps the child; any number may `wait`."""
        try:
            await trio.lowlevel.wait_readable(self.pidfd)
            self.returncode = self.popen.wait()
        finally:
            os.close(self.pidfd)
            self._reaped.set()

    async def wait(self) -> int:
        """Wait until the child has exited and was reaped; its exit code, or -SIGNAL."""
        await self._reaped.wait()
        assert self.returncode is not None
        return self.returncode

    def signal_group(self, signum: int) -> bool:
        """Signal the child's whole process group; False when nothing is left in it."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    async def aclose(self) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None:
                await stream.aclose()


def _child_setup(parent_pid: int) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child between fork and exec: async-signal-safe calls only.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # berthd died before the death signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


class Spawner:
    """Forks on one long-lived thread; `spawn` awaits the result without blocking the event loop."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Callable[[], None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="berthd-spawner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._requests.get()) is not None:
            job[0]()

    def close(self) -> None:
        self._requests.put(None)

    async def spawn(self, request: SpawnRequest) -> Child:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[subprocess.Popen[bytes] | BaseException] = []

        def job() -> None:
            try:
                outcome.append(_popen(request))
            except BaseException as exc:  # noqa: BLE001 - handed back to the awaiting task
                outcome.append(exc)
            token.run_sync_soon(done.set)

        self._requests.put((job,))
        await done.wait()
        result = outcome[0]
        if isinstance(result, BaseException):
            if isinstance(result, FileNotFoundError | PermissionError | NotADirectoryError):
                raise SpawnError(_describe_os_error(request, result)) from None
            raise result
        return _adopt(result)


def _describe_os_error(request: SpawnRequest, exc: OSError) -> str:
    if exc.filename == request.cwd and request.cwd:
        return f"cannot use working directory {request.cwd}: {exc.strerror}"
    return f"cannot start {request.argv[0]}: {exc.strerror}"


def _popen(request: SpawnRequest) -> subprocess.Popen[bytes]:
    identity = request.identity
    return subprocess.Popen(
        list(request.argv),
        stdin=subprocess.PIPE if request.stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=request.cwd,
        env={**request.env, "PWD": request.cwd} if request.cwd else dict(request.env),
        start_new_session=True,
        close_fds=True,
        user=identity.uid if identity else None,
        group=identity.gid if identity else None,
        extra_groups=list(identity.groups) if identity else None,
        preexec_fn=_child_setup(os.getpid()),
    )


def _adopt(popen: subprocess.Popen[bytes]) -> Child:
    assert popen.stdout is not None and popen.stderr is not None
    pidfd = os.pidfd_open(popen.pid)
    stdout = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
    stderr = trio.lowlevel.FdStream(os.dup(popen.stderr.fileno()))
    stdin = trio.lowlevel.FdStream(os.dup(popen.stdin.fileno())) if popen.stdin else None
    for pipe in (popen.stdout, popen.stderr, popen.stdin):
        if pipe is not None:
            pipe.close()
    return Child(popen.pid, popen, stdout, stderr, stdin, pidfd)
