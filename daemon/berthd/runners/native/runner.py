"""Native processes: each in a unit of its own (see spawn.py), output through pipes, never a shell."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import psutil
import trio

from berthd.apps.launch import (
    environment,
    mount_directories,
    open_app_folders,
    process_types,
    resolve_identity,
    working_directory,
)
from berthd.log import LOG
from berthd.runners import (
    ExitStatus,
    Features,
    Handle,
    OutputSink,
    ProcessSpec,
    Runner,
    RunnerError,
    RunnerHost,
    Target,
)
from berthd.runners.native.reaper import Reaper, become_subreaper
from berthd.runners.native.spawn import UNIT_KILL, Child, Spawner, SpawnError, SpawnRequest, check_identity

PIPE_READ = 65536
GROUP_POLL = 0.05
KILL_WAIT = 2.0
PIPE_DRAIN_TIMEOUT = 5.0


@dataclass
class _Running:
    child: Child
    output_done: trio.Event
    exit: ExitStatus | None = None


class NativeRunner(Runner):
    name = "native"
    features = Features(signals=True, exec=True, captured_logs=True, scale=True)

    def __init__(self, host: RunnerHost) -> None:
        super().__init__(host)
        self._nursery: trio.Nursery | None = None
        self._spawner: Spawner | None = None  # its thread lives exactly as long as `serve`
        self._reaper = Reaper()
        self._running: dict[str, _Running] = {}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        become_subreaper()
        self._spawner = Spawner()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reaper.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._spawner.close()

    async def spec_for(self, target: Target, process: str) -> ProcessSpec:
        record = target.app
        kind = process.split(".", 1)[0]
        command = process_types(record).get(kind)
        if command is None:
            raise ValueError(f"process type {kind} is gone from {record.name}")
        identity = resolve_identity(record.settings.user)
        app_dir = self.host.app_dir(record.name)
        env = environment(record, await self.host.store.get_config(record.name), identity, command.env)
        cwd = working_directory(record, app_dir)
        await trio.to_thread.run_sync(open_app_folders, record, app_dir, cwd, record.settings.executable)
        env.update(await trio.to_thread.run_sync(mount_directories, record, app_dir, identity))
        env["BERTH_PROCESS"] = process
        return ProcessSpec(
            app=record.name,
            process=process,
            argv=command.argv,
            cwd=cwd,
            env=env,
            user=record.settings.user,
        )

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle:
        if self._spawner is None or self._nursery is None:
            raise RunnerError("the native runner is not serving")
        try:
            identity = check_identity(spec.user)
            child = await self._spawner.spawn(
                SpawnRequest(spec.argv, spec.cwd, spec.env, identity=identity, stdin=spec.stdin)
            )
        except SpawnError as exc:
            raise RunnerError(str(exc)) from None
        self._reaper.groups.add(child.pid)
        running = _Running(child, trio.Event())
        self._running[str(child.pid)] = running
        self._nursery.start_soon(child.watch)
        self._nursery.start_soon(self._pump_output, running, output)
        create_time = _create_time(child.pid)
        return Handle(
            runner=self.name,
            ref=str(child.pid),
            started_at=time.time(),
            detail={"ctime": create_time, "shim": str(child.shim)},
        )

    def stdin_of(self, handle: Handle) -> trio.lowlevel.FdStream | None:
        running = self._running.get(handle.ref)
        return running.child.stdin if running else None

    async def _pump_output(self, running: _Running, output: OutputSink) -> None:
        async def pump(stream: trio.lowlevel.FdStream, name: str) -> None:
            while True:
                try:
                    data = await stream.receive_some(PIPE_READ)
                except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
                    return
                if not data:
                    return
                output(name, data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, running.child.stdout, "stdout")
                nursery.start_soon(pump, running.child.stderr, "stderr")
        finally:
            running.output_done.set()

    async def recover(self, handle: Handle, output: OutputSink) -> bool:
        """Pipes do not survive berthd: what is left of the group from before is ended (the supervisor
        then starts the process anew). Only members created since the leader are touched, so a
        recycled pid is never mistaken for ours."""
        pgid = int(handle.ref)
        since = float(handle.detail.get("ctime") or handle.started_at) - 0.01
        await trio.to_thread.run_sync(_kill_left_behind, pgid, since)  # walks the process table
        return False

    async def wait(self, handle: Handle) -> ExitStatus:
        running = self._running.get(handle.ref)
        if running is None:
            raise RunnerError(f"process {handle.ref} is not known to this berthd")
        if running.exit is None:
            returncode = await running.child.wait()
            if returncode == -signal.SIGKILL:
                # The shim ends its unit before it exits, as the program did; one killed from outside
                # (as SIGKILLed as a program it mirrors) could not, so what is left of the program's
                # group ends now. Not after other ends: the pids are free, and could be reused.
                running.child.kill_shim()
                with trio.move_on_after(KILL_WAIT):
                    while self._reaper.group_alive(running.child.pid):
                        await trio.sleep(GROUP_POLL)
            with trio.move_on_after(PIPE_DRAIN_TIMEOUT):
                await running.output_done.wait()
            await running.child.aclose()
            running.exit = ExitStatus.from_returncode(returncode)
            self._running.pop(handle.ref, None)
            self._reaper.groups.discard(running.child.pid)
        return running.exit

    async def stop(self, handle: Handle, timeout: float, signum: int = signal.SIGTERM) -> ExitStatus | None:
        """`signum` to every process of the unit; all of it killed once `timeout` has passed."""
        running = self._running.get(handle.ref)
        if running is None:
            return None
        await self._end_unit(running.child, signum, timeout)
        return await self.wait(handle)

    async def _end_unit(self, child: Child, signum: int, timeout: float) -> None:
        """`signum` to the unit, UNIT_KILL (SIGKILL to all of it) once `timeout` has passed; should the
        shim not be gone KILL_WAIT later, SIGKILL to it."""
        if signum != signal.SIGKILL:
            if not child.signal_unit(signum):
                return
            with trio.move_on_after(timeout):
                await child.wait()
                return
        child.signal_unit(UNIT_KILL)
        with trio.move_on_after(KILL_WAIT):
            await child.wait()
            return
        LOG.warning("the shim of process %s did not end its unit: killing it", child.pid)
        child.kill_shim()

    async def destroy(self, handle: Handle) -> None:
        await self.stop(handle, 0, signal.SIGKILL)


def _create_time(pid: int) -> str:
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def _kill_left_behind(pgid: int, since: float) -> None:
    for member in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getpgid(member.pid) == pgid and member.info["create_time"] >= since:
                os.kill(member.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
