"""The runner interface: how berthd starts, watches and stops one process, wherever it runs.

Three runners share it: native processes, Docker containers, HaRP ExApps. As with Nomad's task drivers,
`start` returns a `Handle` that berthd persists, and `recover(handle)` re-attaches after berthd restarts
(or reports that the process is gone, so the supervisor starts it anew). Output goes to an
`OutputSink` as it comes; supervision (restarts, backoff, states) lives above, in `berthd.supervision.supervisor`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

OutputSink = Callable[[str, bytes], None]  # (stream: "stdout" | "stderr", bytes as they come)


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


class RunnerError(Exception):
    """A runner could not do what was asked; the message is for people."""


class Runner(Protocol):
    name: str

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle: ...

    async def recover(self, handle: Handle, output: OutputSink) -> bool: ...

    async def wait(self, handle: Handle) -> ExitStatus: ...

    async def stop(
        self, handle: Handle, timeout: float, signum: int = signal.SIGTERM
    ) -> ExitStatus | None: ...

    async def destroy(self, handle: Handle) -> None: ...

    async def inspect(self, handle: Handle) -> dict[str, object]: ...
