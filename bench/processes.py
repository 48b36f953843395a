"""Every process the benchmarks start is spawned and stopped here.

A `Session` owns one temp dir and the processes started in it. Each runs in its own session (so a
Ctrl-C at the terminal reaches only the benchmark, which then stops them in order) and is stopped with
its whole process group, so socat's forked handlers go too, and with every descendant it had when the
stop began: the processes berthd and supervisord supervise live in process groups of their own.
`close()` stops whatever still runs and removes the temp dir.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

ROOT = Path(__file__).resolve().parent.parent
HANDLER_SCRIPT = Path(__file__).with_name("handler.sh")
READY_POLL = 0.002  # the resolution of the start-up figures
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
STDERR_TAIL = 2000
# socat splits its addresses on these, and EXEC's command line on spaces
SOCAT_SEPARATORS = frozenset(" ,:!;\\'\"")


class BenchError(Exception):
    """A benchmark could not run: a server did not start, or answered something else than expected."""


@dataclass(frozen=True)
class Program:
    """A supervisord program: `numprocs` processes of one command (split on spaces by supervisord)."""

    name: str
    command: str
    numprocs: int


def supervisord_config(workdir: Path, sock: Path, program: Program) -> str:
    """Socket, logs and pid file in `workdir`. The program's settings are berthd's defaults where it has
    one (restart always, SIGTERM, 10 s to SIGKILL, output to log files); `startsecs=0` makes a process
    RUNNING once spawned, as berthd's are, rather than after 1 s up."""
    return f"""\
[unix_http_server]
file={sock}
chmod=0600

[supervisord]
nodaemon=true
logfile={workdir / "supervisord.log"}
pidfile={workdir / "supervisord.pid"}
childlogdir={workdir / "childlogs"}
minfds=4096

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:{program.name}]
command={program.command}
numprocs={program.numprocs}
process_name=%(program_name)s_%(process_num)03d
autostart=false
autorestart=true
startsecs=0
stopsignal=TERM
stopwaitsecs=10
"""


@dataclass
class ServerProcess:
    label: str
    proc: subprocess.Popen[bytes]
    socket: Path
    workdir: Path
    spawned_at: float  # perf_counter() just before the spawn

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self) -> str:
        path = self.workdir / "stderr"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-STDERR_TAIL:]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds from the spawn to the first connection the server accepted."""
        deadline = self.spawned_at + timeout
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.socket))
                    return time.perf_counter() - self.spawned_at
                except (FileNotFoundError, ConnectionRefusedError):
                    pass
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited with {self.proc.returncode}:\n{self.stderr_tail()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.label} did not listen within {timeout:.0f} s:\n{self.stderr_tail()}")
            time.sleep(READY_POLL)


def child_environment() -> dict[str, str]:
    """Ours, minus berthd's own settings, so the figures are those of berthd's defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTHD_") and not k.startswith("LISTEN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def descendants(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return children


def kill_survivors(processes: Sequence[psutil.Process]) -> None:
    """SIGKILL to those still running; psutil checks each is the process it was (not a reused pid)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=STOP_TIMEOUT)


def terminate(server: ServerProcess) -> bool:
    """SIGTERM to the process group, SIGKILL after `STOP_TIMEOUT`; True if SIGTERM did not stop it.
    Descendants in other groups (a daemon's supervised processes) are killed if they outlive it."""
    proc = server.proc
    killed = False
    family = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the leader is gone; its group lives on while a forked handler does
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    kill_survivors(family)
    return killed


def time_to_exit(args: Sequence[str], timeout: float = READY_TIMEOUT) -> float:
    """Seconds from the spawn of a short-lived process to its exit."""
    started = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=child_environment(), check=True, timeout=timeout,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - started


def run_in_own_group(args: Sequence[str], timeout: float) -> float:
    """Seconds from the spawn of `args` to its exit; on a timeout or a Ctrl-C its whole group is killed
    (a shell's pipeline included) before the exception goes on."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        returncode = proc.wait(timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    elapsed = time.perf_counter() - started
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group outlived its leader
    if returncode != 0:
        raise BenchError(f"{args[0]} exited with {returncode}")
    return elapsed


class Session:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="berthd-bench-"))
        self._running: list[ServerProcess] = []
        self._ids = itertools.count(1)
        self.killed: list[str] = []  # servers SIGTERM did not stop within STOP_TIMEOUT

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def new_dir(self, name: str) -> Path:
        path = self.root / f"{name}-{next(self._ids)}"
        path.mkdir()
        return path

    def start_berthd(
        self, data_dir: Path | None = None, profile_to: Path | None = None, options: Sequence[str] = ()
    ) -> ServerProcess:
        """berthd with its default settings but for `options`; under cProfile when `profile_to` is given."""
        workdir = self.new_dir("berthd")
        sock = workdir / "berthd.sock"
        profiler = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
        args = [
            sys.executable, *profiler, "-m", "berthd",
            "--socket", str(sock),
            "--data-dir", str(data_dir or workdir / "data"),
            "--log-file", str(workdir / "berthd.log"),
            *options,
        ]  # fmt: skip
        return self._spawn("berthd", args, sock, workdir)

    def start_supervisord(self, program: Program) -> ServerProcess:
        """supervisord (PyPI `supervisor`) in the foreground on its own UNIX socket, running `program`."""
        workdir = self.new_dir("supervisord")
        sock = workdir / "supervisord.sock"
        (workdir / "childlogs").mkdir()
        config = workdir / "supervisord.conf"
        config.write_text(supervisord_config(workdir, sock, program))
        args = [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "--configuration", str(config)]
        return self._spawn("supervisord", args, sock, workdir)

    def start_echo(self) -> ServerProcess:
        workdir = self.new_dir("echo")
        sock = workdir / "echo.sock"
        return self._spawn(
            "bare trio echo", [sys.executable, "-m", "bench.echo_server", str(sock)], sock, workdir
        )

    def start_socat(self) -> ServerProcess:
        socat, bash = shutil.which("socat"), shutil.which("bash")
        if socat is None or bash is None:
            raise BenchError("the dokku-daemon-style baseline needs socat and bash (scripts/test-deps.sh)")
        workdir = self.new_dir("socat")
        sock = workdir / "socat.sock"
        handler = workdir / "handler.sh"
        shutil.copyfile(HANDLER_SCRIPT, handler)
        if SOCAT_SEPARATORS.intersection(f"{sock}{handler}{bash}"):
            raise BenchError(f"socat cannot take these paths as they are: {sock}, {handler}, {bash}")
        args = [socat, f"UNIX-LISTEN:{sock},fork,backlog=64", f"EXEC:{bash} {handler}"]
        return self._spawn("socat+bash", args, sock, workdir)

    def _spawn(self, label: str, args: Sequence[str], sock: Path, workdir: Path) -> ServerProcess:
        with open(workdir / "stderr", "wb") as stderr:
            spawned_at = time.perf_counter()
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env=child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        server = ServerProcess(label, proc, sock, workdir, spawned_at)
        self._running.append(server)
        return server

    def stop(self, server: ServerProcess) -> None:
        if server in self._running:
            self._running.remove(server)
        if terminate(server):
            self.killed.append(f"{server.label} (pid {server.pid})")

    def close(self) -> None:
        while self._running:
            self.stop(self._running[-1])
        shutil.rmtree(self.root, ignore_errors=True)
