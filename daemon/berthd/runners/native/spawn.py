"""The one place berthd starts a process: each in a unit that berthd can end whole, and that ends
whole when berthd dies, whatever its processes do (fork, double fork, setsid, ignore SIGTERM).

A unit is a small shim and everything under it. berthd starts the shim (in a session of its own, pipes
for the output, never a shell); the shim becomes a child subreaper, so every orphan of the unit is
re-parented to it and not to PID 1, arms a parent-death signal (UNIT_KILL), forks the program and waits.
Signals berthd sends the shim (SIGTERM) go to every process under it; UNIT_KILL, from berthd (a stop's
escalation) or from the kernel (berthd died, even by SIGKILL), and the program's own end make the
shim SIGKILL everything under it, round after round until nothing is left, reap it all, and exit as
the program did (its exit code, or killed by its signal), so the status berthd reads is the program's.
The shim stays root while the program runs as its user: the app cannot signal or kill its supervisor.
Handles name the program's pid (ps:report shows it); the program leads a session of its own, as before.

The shim is in C (UNIT_SHIM_SOURCE), compiled by berthd at start into a sealed memfd: a static binary
whose pages all units share (55 KiB proportional a unit with 200 running), and one vfork more than the
exec helper it replaces (`python -m bench containment`: a start about 1.3 ms p50 against 0.5 ms for a
bare Popen; 200 supervised starts 1.36 s against 1.18 s before units, `bench supervision`). Without a
C compiler it is shim.py, run by this interpreter: some 22-45 ms a start more (interpreter start-up
before the program's exec) and 10 MB resident (5 MB proportional) a unit.

The death signal is tied to the *thread* that forks, so all forks happen on one spawner thread that
lives as long as berthd; trio's worker threads come and go and would kill units when they retire.
Waiting for a unit uses a pidfd on its shim, so nothing polls.

The program's child switches user, then enters the working directory: entered after the switch, the
kernel checks the folder with the user's rights, so a process meant to run as an unprivileged user
never starts in a folder only root may enter.
"""

from __future__ import annotations

import errno
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

# The shim's parent-death signal, and berthd's order to end its unit now: a real-time signal no
# program is sent by berthd otherwise.
UNIT_KILL = signal.SIGRTMIN + 2


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
            if name.isdigit() and group.isdigit():  # ids with no account: no other groups, no home
                return cls(name, int(name), int(group), (int(group),), "/")
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
    """A started unit: the program's pid, its shim (whose exit status is the program's), the program's
    pipes and a pidfd on the shim to wait on."""

    pid: int
    shim: int
    popen: subprocess.Popen[bytes]
    stdout: trio.lowlevel.FdStream
    stderr: trio.lowlevel.FdStream
    stdin: trio.lowlevel.FdStream | None
    pidfd: int
    returncode: int | None = None
    _reaped: trio.Event = field(default_factory=trio.Event)

    async def watch(self) -> None:
        """The one task that waits on the pidfd and reaps the shim; any number may `wait`."""
        try:
            await trio.lowlevel.wait_readable(self.pidfd)
            self.returncode = self.popen.wait()
        finally:
            os.close(self.pidfd)
            self.pidfd = -1
            self._reaped.set()

    async def wait(self) -> int:
        """Wait until the unit has ended and its shim was reaped; the program's exit code, or -SIGNAL."""
        await self._reaped.wait()
        assert self.returncode is not None
        return self.returncode

    def signal_unit(self, signum: int) -> bool:
        """`signum` to every process of the unit (UNIT_KILL: SIGKILL to all of it); False once it ended."""
        if self.pidfd < 0:
            return False
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    def kill_shim(self) -> None:
        """The last resort, should the shim not end its unit: SIGKILL to it and the program's group."""
        for kill in (lambda: self.signal_unit(signal.SIGKILL), lambda: os.killpg(self.pid, signal.SIGKILL)):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                continue

    async def aclose(self) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None:
                await stream.aclose()


# The shims' reports on the error pipe, two ints each: what happened, and the errno (the pid for STARTED).
FAILED_EXEC = 0
FAILED_CHDIR = 1
STARTED = 2
FAILED_USER = 3


# The unit shim in C (the Python one, shim.py, is its twin: read both when changing either).
# argv: SHIM PARENT_PID ERROR_FD CLOSE_FD ENV_FD KILL_SIG UID GID GROUPS CWD PROGRAM ARGS...
# It stays as berthd (root), so the app's user can neither signal nor kill it; the child it forks
# switches to UID:GID:GROUPS ("-": stay), enters CWD (empty: stay) with those rights, starts a session
# and execs PROGRAM, looked up in PATH as Popen does. ENV_FD is the Python shim's (its environment
# changes at start); this one passes its own environment on. Reports on ERROR_FD, two ints each.
UNIT_SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { FAILED_EXEC, FAILED_CHDIR, STARTED, FAILED_USER };
static int error_fd;
static pid_t program;
static int program_status = -1;

static void report(int stage, int value) {
    int message[2] = {stage, value};
    while (write(error_fd, message, sizeof message) < 0 && errno == EINTR) {
    }
}

/* `sig` to every descendant of `pid`, parents before their children; how many there were */
static int signal_tree(pid_t pid, int sig) {
    char path[64];
    int found = 0;
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *tasks = opendir(path);
    if (tasks == NULL) return 0;
    for (struct dirent *task; (task = readdir(tasks)) != NULL;) {
        if (task->d_name[0] == '.') continue;
        char children_path[128];
        snprintf(children_path, sizeof children_path, "%s/%s/children", path, task->d_name);
        FILE *children = fopen(children_path, "re");
        if (children == NULL) continue;
        for (int child; fscanf(children, "%d", &child) == 1;) {
            kill(child, sig);
            found += 1 + signal_tree(child, sig);
        }
        fclose(children);
    }
    closedir(tasks);
    return found;
}

/* Reap every child that has ended; 0 once there is no child left at all */
static int reap(void) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0) return 0;
        if (pid == 0) return 1;
        if (pid == program) program_status = status;
    }
}

/* SIGKILL to everything under the shim, again and again until nothing is left: a process forked by
   one being killed is adopted by the shim (a subreaper) and found in the next round */
static void kill_unit(void) {
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    struct timespec round = {0, 10 * 1000 * 1000};
    while (reap()) {
        signal_tree(getpid(), SIGKILL);
        if (reap()) sigtimedwait(&chld, NULL, &round);
    }
}

/* The shim ends as the program did: the same exit code, or killed by the same signal (no core) */
static void exit_as(int status) {
    if (status == -1 || WIFEXITED(status)) _exit(status == -1 ? 127 : WEXITSTATUS(status));
    int sig = WTERMSIG(status);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(sig, SIG_DFL);
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, sig);
    kill(getpid(), sig);
    sigprocmask(SIG_UNBLOCK, &only, NULL);
    _exit(128 + sig);
}

static int parse_groups(char *text, gid_t *groups, int most) {
    int count = 0;
    for (char *item = strtok(text, ","); item != NULL && count < most; item = strtok(NULL, ",")) {
        groups[count++] = (gid_t)strtoul(item, NULL, 10);
    }
    return count;
}

static void start_program(char **argv, sigset_t *original, pid_t shim) {
    sigprocmask(SIG_SETMASK, original, NULL);
    setsid();
    if (strcmp(argv[6], "-") != 0) {
        static gid_t groups[NGROUPS_MAX];
        int count = parse_groups(argv[8], groups, NGROUPS_MAX);
        gid_t gid = (gid_t)strtoul(argv[7], NULL, 10);
        uid_t uid = (uid_t)strtoul(argv[6], NULL, 10);
        if (setgroups(count, groups) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
            report(FAILED_USER, errno);
            _exit(127);
        }
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); /* after the switch, which clears it */
    if (getppid() != shim) _exit(127);
    if (argv[9][0] != '\0' && chdir(argv[9]) != 0) {
        report(FAILED_CHDIR, errno);
        _exit(127);
    }
    const char *name = argv[10];
    int error = 0;
    if (strchr(name, '/')) {
        execv(name, argv + 10);
        error = errno;
    } else {
        const char *path = getenv("PATH");
        if (path == NULL) path = "/bin:/usr/bin";
        char candidate[PATH_MAX];
        size_t name_length = strlen(name);
        for (const char *dir = path;; dir = strchr(dir, ':') + 1) {
            size_t length = strcspn(dir, ":"); /* an empty entry is the current folder */
            if (length + 1 + name_length < sizeof candidate) {
                memcpy(candidate, dir, length);
                candidate[length] = '/';
                memcpy(candidate + length + 1, name, name_length + 1);
                execv(length ? candidate : name, argv + 10);
                if (errno != ENOENT && errno != ENOTDIR && error == 0) error = errno; /* as Popen */
            }
            if (dir[length] == '\0') break;
        }
        if (error == 0) error = errno;
    }
    report(FAILED_EXEC, error);
    _exit(127);
}

int main(int argc, char **argv) {
    if (argc < 11) return 127;
    error_fd = atoi(argv[2]);
    int kill_sig = atoi(argv[5]);
    sigset_t all, original;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &original);
    signal(SIGCHLD, SIG_DFL);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, kill_sig, 0, 0, 0);
    if (getppid() != (pid_t)atol(argv[1])) _exit(127); /* berthd died before the arming */
    close(atoi(argv[3]));
    fcntl(error_fd, F_SETFD, FD_CLOEXEC);
    pid_t shim = getpid();
    /* vfork: the shim waits while its child switches user and execs (no call there touches the heap
       or returns), so STARTED and the exec reach berthd together, in one wake-up of its spawner */
    program = vfork();
    if (program < 0) {
        report(FAILED_EXEC, errno);
        _exit(127);
    }
    if (program == 0) start_program(argv, &original, shim);
    report(STARTED, program);
    close(error_fd);
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&all, &info);
        if (sig == SIGCHLD) {
            reap();
            if (program_status != -1) break;
        } else if (sig == kill_sig) {
            break;
        } else if (sig > 0 && sig != SIGPIPE && sig != SIGURG && sig != SIGTSTP && sig != SIGTTIN
                   && sig != SIGTTOU) {
            signal_tree(shim, sig);
        }
    }
    kill_unit();
    exit_as(program_status);
}
"""
HELPER_PROBE = "/nonexistent/berthd-exec-helper-probe"
# Children get the conventional umask, whatever berthd's own (077: what berthd makes is private first).
CHILD_UMASK = 0o022
COMPILE_TIMEOUT = 20.0
PYTHON_SHIM = Path(__file__).with_name("shim.py")


@dataclass(frozen=True)
class Shim:
    """How units are started here: the executable's fd (the C shim's memfd, or the interpreter's path
    for the Python shim, whose source is in `script`, a memfd too)."""

    kind: str  # "C" or "Python"
    command: tuple[str, ...]
    keep_fds: tuple[int, ...]
    python: bool


def build_shim() -> Shim:
    """The C shim when it builds and works here, else the Python shim."""
    return c_shim() or python_shim()


def c_shim() -> Shim | None:
    """The C shim, compiled and probed; None (and why, in the log) when it cannot be had here."""
    try:
        helper = _compile(UNIT_SHIM_SOURCE)
    except (OSError, subprocess.SubprocessError) as exc:
        LOG.info("no C shim (%s): processes are started through the Python shim (slower)", exc)
        return None
    shim = Shim("C", (f"/proc/self/fd/{helper}",), (helper,), python=False)
    failure = _probe(shim)
    if failure is None:
        return shim
    os.close(helper)
    LOG.info("the C shim does not work here (%s): processes are started through the Python shim", failure)
    return None


def python_shim() -> Shim:
    """shim.py, run by this interpreter (its real path: a venv's link may sit where a user cannot go)."""
    script = _sealed_memfd(PYTHON_SHIM.read_bytes(), "berthd-unit-shim.py")
    interpreter = os.path.realpath(sys.executable)
    shim = Shim("Python", (interpreter, "-I", "-S", f"/proc/self/fd/{script}"), (script,), python=True)
    failure = _probe(shim)
    if failure is not None:
        LOG.error("the Python shim does not work here either (%s)", failure)
    return shim


def _probe(shim: Shim) -> object | None:
    """None when the shim reports the failed exec of a missing program, as it should; else what went wrong."""
    try:
        _popen(SpawnRequest([HELPER_PROBE], None, {}), shim)
    except FileNotFoundError as exc:
        if exc.filename == HELPER_PROBE:
            return None
        return exc
    except OSError as exc:
        return exc
    return "the probe started"


def _compile(source: str) -> int:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc, gcc)")
    with tempfile.TemporaryDirectory(prefix="berthd-helper-") as folder:
        source_file, binary = Path(folder) / "helper.c", Path(folder) / "helper"
        source_file.write_text(source)
        # static only: the shim is root until its child switches user, with the app's environment, which
        # a dynamic loader would obey (LD_PRELOAD, LD_LIBRARY_PATH): without a static libc, the Python
        # shim, which gets the environment through a descriptor, is used instead
        for static in (["-static"],):
            built = subprocess.run(
                [compiler, "-O2", *static, "-o", str(binary), str(source_file)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=COMPILE_TIMEOUT,
            )
            if built.returncode == 0:
                return _sealed_memfd(binary.read_bytes(), "berthd-exec-helper")
        raise subprocess.SubprocessError(f"{compiler} failed: {built.stderr.decode(errors='replace')}")


def _sealed_memfd(data: bytes, name: str) -> int:
    writable = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
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

    That thread first builds the shim (a fraction of a second, so the first spawns may wait for it)."""

    def __init__(self, build: Callable[[], Shim] = build_shim) -> None:
        self._requests: queue.SimpleQueue[tuple[Callable[[], None]] | None] = queue.SimpleQueue()
        self._build = build
        self._shim: Shim | None = None  # its fds are kept for berthd's lifetime
        self._thread = threading.Thread(target=self._serve, name="berthd-spawner", daemon=True)
        self._thread.start()

    @property
    def shim(self) -> Shim | None:
        return self._shim

    def _serve(self) -> None:
        self._shim = self._build()
        while (job := self._requests.get()) is not None:
            job[0]()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the spawner thread and wait for it: a thread still in a fork or a compile while the
        interpreter finalizes can crash it. Units still running get their death signal."""
        self._requests.put(None)
        self._thread.join(timeout)

    async def spawn(self, request: SpawnRequest) -> Child:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[tuple[subprocess.Popen[bytes], int] | BaseException] = []

        def job() -> None:
            try:
                assert self._shim is not None
                outcome.append(_popen(request, self._shim))
            except BaseException as exc:  # noqa: BLE001 - handed back to the awaiting task
                outcome.append(exc)
            token.run_sync_soon(done.set)

        self._requests.put((job,))
        await done.wait()
        result = outcome[0]
        if isinstance(result, BaseException):
            if isinstance(result, OSError):  # ENOENT, EACCES, ENOEXEC, a bad cwd...: the request's fault
                raise SpawnError(_describe_os_error(request, result)) from None
            raise result
        return _adopt(*result)


def _describe_os_error(request: SpawnRequest, exc: OSError) -> str:
    if exc.filename == request.cwd and request.cwd:
        who = f" as {request.identity.user}" if request.identity else ""
        return f"cannot enter working directory {request.cwd}{who}: {exc.strerror}"
    hint = ""
    if exc.errno == errno.ENOEXEC:
        hint = " (a script needs a #! line naming its interpreter)"
    elif exc.errno == errno.ENOENT and os.path.exists(request.argv[0]):
        hint = " (its #! line names an interpreter that is not there)"
    return f"cannot start {request.argv[0]}: {exc.strerror or exc}{hint}"


def _popen(request: SpawnRequest, shim: Shim) -> tuple[subprocess.Popen[bytes], int]:
    """The unit started through `shim`: its Popen (the shim's) and the program's pid; a failure to
    switch user, enter the folder or exec is raised here as Popen's own OSError would be."""
    report, error_fd = os.pipe2(os.O_CLOEXEC)
    env = {**request.env, "PWD": request.cwd} if request.cwd else dict(request.env)
    env_fd = _environment_memfd(env) if shim.python else -1
    identity = request.identity
    user = (
        (str(identity.uid), str(identity.gid), ",".join(map(str, identity.groups)))
        if identity
        else ("-",) * 3
    )
    try:
        try:
            args = [str(os.getpid()), str(error_fd), str(shim.keep_fds[0]), str(env_fd), str(UNIT_KILL)]
            argv = [*shim.command, *args, *user, request.cwd or "", *request.argv]
            passed = (*shim.keep_fds, error_fd, *([env_fd] if env_fd >= 0 else []))
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if request.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={} if shim.python else env,
                start_new_session=True,
                close_fds=True,
                pass_fds=passed,
                umask=CHILD_UMASK,
            )
        finally:
            os.close(error_fd)
            if env_fd >= 0:
                os.close(env_fd)
        messages = _read_to_end(report)  # complete once the program was exec'd (or could not be)
    finally:
        os.close(report)
    program, failure = 0, None
    for offset in range(0, len(messages) - 7, 8):
        stage = int.from_bytes(messages[offset : offset + 4], sys.byteorder, signed=True)
        value = int.from_bytes(messages[offset + 4 : offset + 8], sys.byteorder, signed=True)
        if stage == STARTED:
            program = value
        else:
            failure = (stage, value)
    if failure is not None or not program:
        popen.wait()
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None:
                pipe.close()
        stage, code = failure or (FAILED_EXEC, 0)
        if not code:
            raise OSError(f"the unit shim ended before its program started (status {popen.returncode})")
        raise OSError(code, os.strerror(code), request.cwd if stage == FAILED_CHDIR else request.argv[0])
    return popen, program


def _environment_memfd(env: Mapping[str, str]) -> int:
    """The environment for the Python shim, NUL-separated in a memfd (never in argv: anyone may read it)."""
    fd = os.memfd_create("berthd-unit-env", os.MFD_CLOEXEC)
    data = b"".join(os.fsencode(f"{name}={value}") + b"\0" for name, value in env.items())
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])
    return fd


def _read_to_end(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 64):
        data += chunk
    return data


def _adopt(popen: subprocess.Popen[bytes], program: int) -> Child:
    assert popen.stdout is not None and popen.stderr is not None
    pidfd = os.pidfd_open(popen.pid)
    stdout = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
    stderr = trio.lowlevel.FdStream(os.dup(popen.stderr.fileno()))
    stdin = trio.lowlevel.FdStream(os.dup(popen.stdin.fileno())) if popen.stdin else None
    for pipe in (popen.stdout, popen.stderr, popen.stdin):
        if pipe is not None:
            pipe.close()
    return Child(program, popen.pid, popen, stdout, stderr, stdin, pidfd)
