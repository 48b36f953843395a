"""The unit shim in Python, for hosts without a C compiler: the twin of UNIT_SHIM_SOURCE in spawn.py.

berthd runs it as `python -I -S /proc/self/fd/N ARGS` (the interpreter's real path, the source in a
sealed memfd), never imported. It uses only modules built into the interpreter, plus ctypes for prctl.
The program's environment comes NUL-separated in the memfd ENV_FD, not from this interpreter's own:
Python adds LC_CTYPE to it at start (PEP 538) when the locale is C.

argv: SHIM PARENT_PID ERROR_FD CLOSE_FD ENV_FD KILL_SIG UID GID GROUPS CWD PROGRAM ARGS...
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

FAILED_EXEC, FAILED_CHDIR, STARTED, FAILED_USER = 0, 1, 2, 3
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
ROUND = 0.01  # between two rounds of SIGKILL while something is left
NOT_FORWARDED = frozenset({signal.SIGPIPE, signal.SIGURG, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

_prctl = ctypes.CDLL(None, use_errno=True).prctl


def report(error_fd: int, stage: int, value: int) -> None:
    os.write(error_fd, stage.to_bytes(4, sys.byteorder, signed=True) + value.to_bytes(4, sys.byteorder))


def signal_tree(pid: int, signum: int) -> int:
    """`signum` to every descendant of `pid`, parents before their children; how many there were."""
    found = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                pids = [int(word) for word in children.read().split()]
        except OSError:
            continue
        for child in pids:
            try:  # noqa: SIM105 - contextlib would lengthen every start of the shim
                os.kill(child, signum)
            except OSError:
                pass
            found += 1 + signal_tree(child, signum)
    return found


class Unit:
    def __init__(self, program: int) -> None:
        self.program = program
        self.status: int | None = None

    def reap(self) -> bool:
        """Reap every child that has ended; False once there is no child left at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.program:
                self.status = status

    def kill(self) -> None:
        """SIGKILL to everything under the shim until nothing is left (see kill_unit in the C shim)."""
        while self.reap():
            signal_tree(os.getpid(), signal.SIGKILL)
            if self.reap():
                signal.sigtimedwait({signal.SIGCHLD}, ROUND)

    def exit(self) -> None:
        """End as the program did: its exit code, or killed by its signal (no core)."""
        status = self.status
        if status is None or os.WIFEXITED(status):
            os._exit(127 if status is None else os.WEXITSTATUS(status))
        signum = os.WTERMSIG(status)
        _prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os._exit(128 + signum)


def read_environment(fd: int) -> dict[bytes, bytes]:
    data = b""
    while chunk := os.pread(fd, 65536, len(data)):
        data += chunk
    os.close(fd)
    pairs = (entry.partition(b"=") for entry in data.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def start_program(args: list[str], env: dict[bytes, bytes], original: set[int], shim: int) -> None:
    error_fd = int(args[2])
    uid, gid, groups, cwd, argv = args[6], args[7], args[8], args[9], args[10:]
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, original)
        os.setsid()
        if uid != "-":
            try:
                os.setgroups([int(group) for group in groups.split(",") if group])
                os.setresgid(int(gid), int(gid), int(gid))
                os.setresuid(int(uid), int(uid), int(uid))
            except OSError as exc:
                report(error_fd, FAILED_USER, exc.errno or 0)
                return
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the switch, which clears it
        if os.getppid() != shim:
            return
        if cwd:
            try:
                os.chdir(cwd)
            except OSError as exc:
                report(error_fd, FAILED_CHDIR, exc.errno or 0)
                return
        report(error_fd, FAILED_EXEC, exec_program(argv, env))
    finally:
        os._exit(127)


def exec_program(argv: list[str], env: dict[bytes, bytes]) -> int:
    """exec the program, looked up in PATH as Popen does; the errno when it could not be."""
    name = argv[0]
    if "/" in name:
        candidates = [name]
    else:
        path = env.get(b"PATH", b"/bin:/usr/bin").decode()
        candidates = [os.path.join(folder, name) if folder else name for folder in path.split(":")]
    error = last = 0
    for candidate in candidates:
        try:
            os.execve(candidate, argv, env)
        except OSError as exc:
            last = exc.errno or 0
            if last not in (2, 20) and error == 0:  # ENOENT, ENOTDIR: try the next folder, as Popen
                error = last
    return error or last


def main(args: list[str]) -> None:
    error_fd, kill_sig = int(args[2]), int(args[5])
    original = signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    _prctl(PR_SET_PDEATHSIG, kill_sig, 0, 0, 0)
    if os.getppid() != int(args[1]):  # berthd died before the arming
        os._exit(127)
    os.close(int(args[3]))
    os.set_inheritable(error_fd, False)  # Popen passed it inheritable; the program's exec must close it
    env = read_environment(int(args[4]))
    shim = os.getpid()
    try:
        program = os.fork()
    except OSError as exc:
        report(error_fd, FAILED_EXEC, exc.errno or 0)
        os._exit(127)
    if program == 0:
        start_program(args, env, original, shim)
    report(error_fd, STARTED, program)
    os.close(error_fd)
    unit = Unit(program)
    everything = signal.valid_signals()
    while True:
        signum = signal.sigwaitinfo(everything).si_signo
        if signum == signal.SIGCHLD:
            unit.reap()
            if unit.status is not None:
                break
        elif signum == kill_sig:
            break
        elif signum not in NOT_FORWARDED:
            signal_tree(shim, signum)
    unit.kill()
    unit.exit()


if __name__ == "__main__":
    main(sys.argv)
