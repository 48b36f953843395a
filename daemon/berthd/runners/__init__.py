"""The runner interface: how berthd starts, watches and stops one process, wherever it runs.

Every runner (native processes, Docker containers, manual-install ExApps, ExApps through HaRP; Swarm to come) is one
sub-folder here behind this one interface, and `berthd.runners.table` picks the runner of an app. As with
Nomad's task drivers, `start` returns a `Handle` that berthd persists, and `recover(handle)` re-attaches
after berthd restarts (or reports that the process is gone, so the supervisor starts it anew); each runner
declares its `Features`, and callers ask those instead of checking which runner it is. Output goes to an
`OutputSink` as it comes; supervision (restarts, backoff, states) lives above, in `berthd.supervision`.
Runners raise `RunnerError` (or a `CommandError` such as `unavailable`); the commands turn them into answers.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import trio

from berthd.config import Config
from berthd.store import Store
from berthd.store.records import AppRecord, DaemonRecord

OutputSink = Callable[[str, bytes], None]  # (stream: "stdout" | "stderr", bytes as they come)
Progress = Callable[[str, int | None, int | None], None]  # (stage, done, total), from any thread
LineSink = Callable[[str, str], None]  # (stream, line), from a worker thread


class Features(msgspec.Struct, frozen=True, kw_only=True):
    """What a runner can do. Commands ask these, never the runner's name."""

    signals: bool = False  # berthd owns the process and signals its group (it has a pid)
    exec: bool = False  # one-shot runs: `run`, build commands
    captured_logs: bool = False  # berthd captures the output into its own log files
    engine_logs: bool = False  # an engine keeps the output: `logs` and `follow_logs` read it
    image_pull: bool = False  # `prepare` pulls an image before the first start
    scale: bool = False  # more than one process of a type
    fingerprint: bool = False  # `fingerprint` reports a daemon's engine, for placement
    engine: bool = False  # `check` reaches an engine behind the deploy daemon
    engine_restarts: bool = False  # the engine restarts the process under the app's policy: see `watch`


class Target(msgspec.Struct, frozen=True):
    """An app and the deploy daemon it goes through (None: this host)."""

    app: AppRecord
    daemon: DaemonRecord | None = None


class EngineLine(msgspec.Struct, frozen=True):
    timestamp: str
    stream: str
    text: str


class DaemonStatus(msgspec.Struct, frozen=True):
    reachable: bool
    version: str | None = None  # the engine's (Docker's) version
    why: str | None = None  # why not reachable
    harp_version: str | None = None  # HaRP's, for a daemon reached through it
    kubernetes_reachable: bool | None = None  # for a Kubernetes daemon: HaRP reaches the cluster


@dataclass(frozen=True)
class RunnerHost:
    """What every runner is built with."""

    config: Config
    store: Store
    data_dir: Path

    def app_dir(self, app: str) -> Path:
        return self.data_dir / "apps" / app


class ProcessSpec(msgspec.Struct, frozen=True, kw_only=True):
    app: str
    process: str  # "web.1", "main.1", "job-<id>"
    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    user: str | None = None
    stdin: bool = False
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # what one runner needs beyond this


class Handle(msgspec.Struct, frozen=True, kw_only=True):
    runner: str
    ref: str  # a pid, a container id, an ExApp id
    started_at: float
    detail: dict[str, str] = msgspec.field(default_factory=dict)


class ExitStatus(msgspec.Struct, frozen=True):
    code: int | None  # None: killed by a signal
    signal: int | None = None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        return cls(None, -returncode) if returncode < 0 else cls(returncode)

    @property
    def success(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        if self.code == 127:
            return "exited with code 127 (executable not found)"
        return f"exited with code {self.code}"


class EngineRun(msgspec.Struct, frozen=True, kw_only=True):
    """What an engine that restarts a process itself (`features.engine_restarts`) says of it now."""

    looked_at: float  # time.monotonic() as the engine answered: of two looks, the later one counts
    restarting: bool  # it exited and the engine waits to start it again
    ended: bool = False  # it exited and the engine gave up on it (neither: it runs)
    restarts: int  # restarts the engine made since the process was last started by berthd
    started_at: float | None = None  # of the run going on (or the last one)
    last_exit: ExitStatus | None = None  # its last exit, when the engine still tells it


EngineSink = Callable[[EngineRun], None]


class RunnerError(Exception):
    """A runner could not do what was asked; the message is for people."""


class Runner:
    """The interface, with what a runner without a feature answers. Subclasses set `name` and `features`
    and override the methods their features promise."""

    name: ClassVar[str]
    features: ClassVar[Features]

    def __init__(self, host: RunnerHost) -> None:
        self.host = host

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The runner's own life (threads, watchers), in the manager's nursery; cancelled at the end."""
        task_status.started()
        await trio.sleep_forever()

    # one process

    async def spec_for(self, target: Target, process: str) -> ProcessSpec:
        """What process `process` ("web.1") of the app is started with, from the app as it is now."""
        raise NotImplementedError

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle:
        raise NotImplementedError

    async def recover(self, handle: Handle, output: OutputSink) -> bool:
        return False

    async def wait(self, handle: Handle) -> ExitStatus:
        raise NotImplementedError

    async def watch(self, handle: Handle, seen: EngineSink) -> ExitStatus:
        """`wait`; with `features.engine_restarts`, the engine restarts the process itself, `seen` hears
        each change of what it says, and the exit returned is the one the engine did not restart."""
        return await self.wait(handle)

    async def look(self, handle: Handle) -> EngineRun | None:
        """`features.engine_restarts`: what the engine says of the process now (None: it is gone)."""
        return None

    async def restart_policy_changed(self, handle: Handle, policy: str) -> None:
        """`features.engine_restarts`: the engine applies the app's new restart policy from now on."""
        return None

    async def stop(self, handle: Handle, timeout: float, signum: int = signal.SIGTERM) -> ExitStatus | None:
        raise NotImplementedError

    async def destroy(self, handle: Handle) -> None:
        return None

    async def inspect(self, handle: Handle) -> dict[str, object]:
        """What the runner knows of a running process beyond berthd's own report."""
        return {}

    def shown_ref(self, handle: Handle) -> str:
        return handle.ref

    def stdin_of(self, handle: Handle) -> trio.lowlevel.FdStream | None:
        return None

    # the app as a whole

    async def prepare(self, target: Target, progress: Progress | None) -> None:
        """Before the first start (`features.image_pull`: the image is there)."""
        return None

    async def remove(self, target: Target, keep_data: bool) -> None:
        """Whatever the runner keeps of the app beyond its processes (a container, a volume)."""
        return None

    async def logs(self, target: Target, tail: int) -> list[EngineLine]:
        """`features.engine_logs`: the last `tail` lines the engine kept."""
        return []

    async def follow_logs(self, target: Target, send: LineSink) -> None:
        """`features.engine_logs`: new lines as the engine streams them, until cancelled."""
        return None

    # the deploy daemon

    async def check(self, daemon: DaemonRecord) -> DaemonStatus:
        """`features.engine`: is the daemon's engine reachable."""
        return DaemonStatus(reachable=True)

    async def fingerprint(self, daemon: DaemonRecord) -> dict[str, Any]:
        """`features.fingerprint`: the engine's own `info` (OS, architecture, CPUs, memory)."""
        raise NotImplementedError

    async def check_image(self, daemon: DaemonRecord, image: str) -> None:
        """`features.engine`: the image is on the daemon's engine, or a pull would find it; else a
        `RunnerError` saying why (an engine that cannot be reached is `unavailable`)."""
        return None
