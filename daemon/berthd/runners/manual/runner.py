"""manual-install: the ExApp is started by someone else; berthd only knows where it is and asks it.

`start` records nothing on the host and waits for the heartbeat; `wait` keeps asking and returns when
the app stops answering, so the supervisor shows it (BACKOFF, then RUNNING again when it is back).
"""

from __future__ import annotations

import time

import trio

from berthd.deploy.exapp import app_host, free_port
from berthd.deploy.heartbeat import heartbeat_ok, wait_heartbeat
from berthd.runners import ExitStatus, Features, Handle, OutputSink, ProcessSpec, Runner, RunnerError, Target

START_TIMEOUT = 30.0
CHECK_EVERY = 5.0
MISSES = 3


class ManualRunner(Runner):
    name = "manual"
    features = Features()  # berthd neither starts it, nor keeps its output, nor reaches an engine

    async def spec_for(self, target: Target, process: str) -> ProcessSpec:
        if target.daemon is None:
            raise RunnerError(f"{target.app.name} has no deploy daemon")
        _, port = await self.host.store.exapp_identity(target.app.name, lambda taken: free_port(taken))
        options = {"host": app_host(target.daemon), "port": port}
        return ProcessSpec(app=target.app.name, process=process, argv=[], options=options)

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle:
        host, port = str(spec.options["host"]), int(spec.options["port"])
        timeout = float(spec.options.get("heartbeat_timeout", START_TIMEOUT))
        if not await trio.to_thread.run_sync(wait_heartbeat, host, port, timeout, abandon_on_cancel=True):
            raise RunnerError(f"{spec.app} does not answer its heartbeat at http://{host}:{port}/heartbeat")
        return Handle(runner=self.name, ref=f"{host}:{port}", started_at=time.time(), detail={"host": host})

    async def wait(self, handle: Handle) -> ExitStatus:
        host, _, port = handle.ref.rpartition(":")
        misses = 0
        while misses < MISSES:
            await trio.sleep(CHECK_EVERY)
            answered = await trio.to_thread.run_sync(heartbeat_ok, host, int(port), abandon_on_cancel=True)
            misses = 0 if answered else misses + 1
        return ExitStatus(1)

    async def stop(self, handle: Handle, timeout: float, signum: int = 15) -> ExitStatus | None:
        return ExitStatus(0)  # berthd did not start it and does not stop it

    async def inspect(self, handle: Handle) -> dict[str, object]:
        host, _, port = handle.ref.rpartition(":")
        answers = await trio.to_thread.run_sync(heartbeat_ok, host, int(port), abandon_on_cancel=True)
        return {"address": handle.ref, "answers": answers}
