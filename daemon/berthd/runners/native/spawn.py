"""The one place berthd starts a process.

Every child gets its own session (so its whole process group can be signalled), pipes for its
output, never a shell, and PR_SET_PDEATHSIG=SIGKILL so it dies with berthd even when berthd is killed
with SIGKILL. The death signal is tied to the *thread* that forks, so all forks happen on one spawner
thread that lives as long as berthd; trio's worker threads come and go and would kill children when
they retire. Waiting for a child uses a pidfd, so nothing polls.

The death signal is armed by a tiny exec helper (C, compiled by berthd at start into a sealed memfd):
a `preexec_fn` would do the same but forces CPython's slow fork path (about 4 ms a spawn at 30 MB
instead of 0.3 ms). The helper runs after Popen has switched user (a credential change clears the
death signal), checks that berthd did not die before the signal was armed, and execs the program,
sending an exec failure's errno back so that errors read as Popen's own. Without a C compiler, or
where the helper cannot run, berthd falls back to the `preexec_fn`.

The working directory is entered by the helper (or the `preexec_fn`), never by Popen: Popen changes
directory before it switches user, so a process meant to run as an unprivileged user could start in a
folder only root may enter. Entered after the switch, the kernel checks the folder with the user's rights.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import grp
import os
import pwd
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from berthd.log import LOG

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


# What failed in the child, as the helper and the preexec_fn report it (with the errno) on the error pipe.
FAILED_EXEC = 0
FAILED_CHDIR = 1


def _child_setup(parent_pid: int, cwd: str | None, error_fd: int) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child between fork and exec, after the user switch: async-signal-safe calls only.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # berthd died before the death signal was armed
            os.kill(os.getpid(), signal.SIGKILL)
        if cwd is not None:
            try:
                os.chdir(cwd)
            except OSError as exc:
                os.write(error_fd, _report(FAILED_CHDIR, exc.errno or 0))
                os._exit(127)

    return setup


def _report(stage: int, code: int) -> bytes:
    return stage.to_bytes(4, sys.byteorder, signed=True) + code.to_bytes(4, sys.byteorder, signed=True)


# argv: HELPER PARENT_PID ERROR_FD SELF_FD CWD PROGRAM ARGS...; CWD (empty: stay) is entered first, with
# the user's rights; PROGRAM is looked up in PATH as Popen does (no /bin/sh for a file without a #! line).
# A failure writes two ints to ERROR_FD: what failed (0 exec, 1 chdir) and its errno.
EXEC_HELPER_SOURCE = r"""
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static void report(int error_fd, int stage, int error) {
    int message[2] = {stage, error};
    while (write(error_fd, message, sizeof message) < 0 && errno == EINTR) {
    }
    _exit(127);
}

int main(int argc, char **argv) {
    if (argc < 6) return 127;
    int error_fd = atoi(argv[2]);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != (pid_t)atol(argv[1])) kill(getpid(), SIGKILL); /* berthd died before the arming */
    close(atoi(argv[3]));
    fcntl(error_fd, F_SETFD, FD_CLOEXEC);
    if (argv[4][0] != '\0' && chdir(argv[4]) != 0) report(error_fd, 1, errno);
    const char *program = argv[5];
    int error = 0;
    if (strchr(program, '/')) {
        execv(program, argv + 5);
        error = errno;
    } else {
        const char *path = getenv("PATH");
        if (path == NULL) path = "/bin:/usr/bin";
        char candidate[PATH_MAX];
        for (const char *dir = path;; dir = strchr(dir, ':') + 1) {
            size_t length = strcspn(dir, ":");
            int written = length ? snprintf(candidate, sizeof candidate, "%.*s/%s", (int)length, dir, program)
                                 : snprintf(candidate, sizeof candidate, "%s", program);
            if (written > 0 && (size_t)written < sizeof candidate) {
                execv(candidate, argv + 5);
                if (errno != ENOENT && errno != ENOTDIR && error == 0) error = errno; /* as Popen */
            }
            if (dir[length] == '\0') break;
        }
        if (error == 0) error = errno;
    }
    report(error_fd, 0, error);
}
"""
HELPER_PROBE = "/nonexistent/berthd-exec-helper-probe"
# Children get the conventional umask, whatever berthd's own (077: what berthd makes is private first).
CHILD_UMASK = 0o022
COMPILE_TIMEOUT = 20.0


def build_exec_helper() -> int | None:
    """The helper compiled into a sealed memfd, an fd to exec through /proc/self/fd (reachable by any
    user a child switches to, and on no file system that could be mounted noexec); None when it
    cannot be built or does not work here."""
    try:
        helper = _compile(EXEC_HELPER_SOURCE)
    except (OSError, subprocess.SubprocessError) as exc:
        LOG.info("no exec helper (%s): processes are started with preexec_fn (slower)", exc)
        return None
    try:
        _popen(SpawnRequest([HELPER_PROBE], None, {}), helper)
    except FileNotFoundError as exc:
        if exc.filename == HELPER_PROBE:  # the helper ran and reported the failed exec, as it should
            return helper
        failure: object = exc
    except OSError as exc:
        failure = exc
    else:
        failure = "the probe started"
    os.close(helper)
    LOG.info("the exec helper does not work here (%s): processes are started with preexec_fn", failure)
    return None


def _compile(source: str) -> int:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc, gcc)")
    with tempfile.TemporaryDirectory(prefix="berthd-helper-") as folder:
        source_file, binary = Path(folder) / "helper.c", Path(folder) / "helper"
        source_file.write_text(source)
        for static in (["-static"], []):  # static: no dynamic loader at every exec; not every host can
            built = subprocess.run(
                [compiler, "-O2", *static, "-o", str(binary), str(source_file)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=COMPILE_TIMEOUT,
            )
            if built.returncode == 0:
                return _sealed_memfd(binary.read_bytes())
        raise subprocess.SubprocessError(f"{compiler} failed: {built.stderr.decode(errors='replace')}")


def _sealed_memfd(data: bytes) -> int:
    writable = os.memfd_create("berthd-exec-helper", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        written = 0
        while written < len(data):
            written += os.write(writable, data[written:])
        os.fchmod(writable, 0o755)
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(writable, fcntl.F_ADD_SEALS, seals)
        # exec refuses a file open for writing (ETXTBSY): keep a read-only fd only
        return os.open(f"/proc/self/fd/{writable}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(writable)


class Spawner:
    """Forks on one long-lived thread; `spawn` awaits the result without blocking the event loop.

    That thread first builds the exec helper (a fraction of a second, so the first spawns may wait
    for it); where it cannot be built, every spawn uses the `preexec_fn`."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Callable[[], None]] | None] = queue.SimpleQueue()
        self._helper: int | None = None  # the exec helper's fd, kept for berthd's lifetime
        self._thread = threading.Thread(target=self._serve, name="berthd-spawner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._helper = build_exec_helper()
        except Exception:  # noqa: BLE001 - a bug here must not stop every spawn; preexec_fn still works
            LOG.exception("cannot build the exec helper")
        while (job := self._requests.get()) is not None:
            job[0]()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the spawner thread and wait for it: a thread still in a fork or a compile while the
        interpreter finalizes can crash it."""
        self._requests.put(None)
        self._thread.join(timeout)

    async def spawn(self, request: SpawnRequest) -> Child:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[subprocess.Popen[bytes] | BaseException] = []

        def job() -> None:
            try:
                outcome.append(_popen(request, self._helper))
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
        who = f" as {request.identity.user}" if request.identity else ""
        return f"cannot enter working directory {request.cwd}{who}: {exc.strerror}"
    return f"cannot start {request.argv[0]}: {exc.strerror}"


def _popen(request: SpawnRequest, helper: int | None) -> subprocess.Popen[bytes]:
    """Started through the exec helper when there is one, else with the `preexec_fn`; either enters
    the working directory as the user and reports a failure, raised here as Popen's own OSError."""
    report, error_fd = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            if helper is None:
                setup = _child_setup(os.getpid(), request.cwd, error_fd)
                popen = _start(request, list(request.argv), (), setup)
            else:
                argv = [
                    f"/proc/self/fd/{helper}", str(os.getpid()), str(error_fd), str(helper),
                    request.cwd or "", *request.argv,
                ]  # fmt: skip
                popen = _start(request, argv, (helper, error_fd), None)
        finally:
            os.close(error_fd)
        failure = _read_to_end(report)  # empty once the program was exec'd
    finally:
        os.close(report)
    if failure:
        popen.wait()
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None:
                pipe.close()
        stage = int.from_bytes(failure[:4], sys.byteorder, signed=True)
        code = int.from_bytes(failure[4:8], sys.byteorder, signed=True)
        raise OSError(code, os.strerror(code), request.cwd if stage == FAILED_CHDIR else request.argv[0])
    return popen


def _start(
    request: SpawnRequest, argv: list[str], pass_fds: tuple[int, ...], preexec_fn: Callable[[], None] | None
) -> subprocess.Popen[bytes]:
    identity = request.identity
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if request.stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**request.env, "PWD": request.cwd} if request.cwd else dict(request.env),
        start_new_session=True,
        close_fds=True,
        pass_fds=pass_fds,
        user=identity.uid if identity else None,
        group=identity.gid if identity else None,
        extra_groups=list(identity.groups) if identity else None,
        preexec_fn=preexec_fn,
        umask=CHILD_UMASK,
    )


def _read_to_end(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 64):
        data += chunk
    return data


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
