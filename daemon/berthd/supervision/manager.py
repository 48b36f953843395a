"""All supervised processes of all apps: started from what the store says should run, stopped on demand.

Desired state (running or not, and how many of each process type) lives in the store, so berthd
started after a crash brings back exactly what was meant to run. Each process is one task in this
manager's nursery, supervised by `berthd.supervision.supervisor.SupervisedProcess`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import msgspec
import trio

from berthd.apps.launch import default_scale, free_port, process_types, wants_port
from berthd.config import Config
from berthd.errors import CommandError, invalid_argument, not_found
from berthd.log import LOG
from berthd.runners import DaemonStatus, Handle, ProcessSpec, Runner, RunnerHost, Target
from berthd.runners.table import RUNNERS, daemon_runner_class, host_runner_class, runner_class, through_daemon
from berthd.store import Store
from berthd.store.records import AppRecord, DaemonRecord
from berthd.supervision.logs import LogCounts, LogFile
from berthd.supervision.supervisor import RestartPolicy, State, SupervisedProcess, SupervisionCounts

RUNNING = "running"
STOPPED = "stopped"


class ProcessManager:
    def __init__(self, config: Config, store: Store, data_dir: Path) -> None:
        self.config = config
        self.store = store
        self.data_dir = data_dir
        self.processes: dict[tuple[str, str], SupervisedProcess] = {}
        self.logs: dict[tuple[str, str], LogFile] = {}
        self.ports: dict[tuple[str, str], int] = {}  # the PORT of each process of a Procfile type
        self.counts = SupervisionCounts()  # restarts and give-ups of all processes, for the metrics
        self.log_counts = LogCounts()  # what all their logs wrote, for the metrics
        self._nursery: trio.Nursery | None = None
        host = RunnerHost(config, store, data_dir)
        self.runners: dict[type[Runner], Runner] = {kind: kind(host) for kind in RUNNERS}

    # runners

    async def daemon_for(self, record: AppRecord) -> DaemonRecord:
        """The deploy daemon of an image app: its own, else the default."""
        name = record.settings.daemon or record.source.detail.get("daemon")
        daemon = await (self.store.get_daemon(name) if name else self.store.get_default_daemon())
        if daemon is None:
            raise not_found(
                f"no deploy daemon {name!r}" if name else "no default deploy daemon: register one"
            )
        return daemon

    async def target_of(self, record: AppRecord) -> Target:
        return Target(record, await self.daemon_for(record) if through_daemon(record.source.kind) else None)

    async def runner_for(self, record: AppRecord) -> tuple[Runner, Target]:
        """The app's runner (from the runner table) and what it runs."""
        target = await self.target_of(record)
        return self.runners[runner_class(record, target.daemon)], target

    def host_runner(self) -> Runner:
        """The runner of the apps that run on this host (and of builds)."""
        return self.runners[host_runner_class()]

    def daemon_runner(self, daemon: DaemonRecord) -> Runner:
        """The runner of the apps deployed through `daemon`."""
        return self.runners[daemon_runner_class(daemon)]

    async def default_engine_status(self) -> DaemonStatus | None:
        """The default deploy daemon's engine, when it has one."""
        daemon = await self.store.get_default_daemon()
        if daemon is None:
            return None
        runner = self.daemon_runner(daemon)
        return await runner.check(daemon) if runner.features.engine else None

    # life of the manager

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for runner in self.runners.values():
                    await nursery.start(runner.serve)
                await self._recover()
                task_status.started()
                await trio.sleep_forever()
        finally:
            for log in self.logs.values():
                log.close()

    async def _recover(self) -> None:
        """End what a previous berthd left behind, then start what should run."""
        by_name = {runner.name: runner for runner in self.runners.values()}
        for app, process, raw in await self.store.all_handles():
            handle = msgspec.json.decode(raw, type=Handle)
            runner = by_name.get(handle.runner)
            if runner is not None and runner.features.signals:
                # berthd's own process groups: what is left of them is ended
                await runner.recover(handle, self.log_of(app, process).write)
            # containers are found again by their name when their app starts
            await self.store.save_handle(app, process, None)
        for app in await self.store.apps_desired_running():
            try:
                await self.start_app(app, resume=True)
            except CommandError as exc:
                LOG.error("cannot bring back %s: %s", app, exc.message)

    async def shutdown(self) -> None:
        """Stop every process (desired state unchanged: they come back when berthd does)."""

        async def stop(process: SupervisedProcess) -> None:
            try:
                await process.stop()
            except CommandError as exc:  # an engine away: its containers keep running, as Docker keeps them
                LOG.warning("could not stop %s/%s: %s", process.app, process.name, exc.message)

        async with trio.open_nursery() as nursery:
            for process in list(self.processes.values()):
                nursery.start_soon(stop, process)

    # apps

    def log_of(self, app: str, process: str) -> LogFile:
        key = (app, process)
        if key not in self.logs:
            path = self.data_dir / "apps" / app / "logs" / f"{process}.log"
            self.logs[key] = LogFile(
                path, self.config.log_max_bytes, self.config.log_backups, counts=self.log_counts
            )
        return self.logs[key]

    def processes_of(self, app: str) -> list[SupervisedProcess]:
        return sorted((p for (a, _), p in self.processes.items() if a == app), key=lambda p: _order(p.name))

    async def desired_scale(self, app: str) -> dict[str, int]:
        record = await self.store.get_app(app)
        if record is None:
            raise not_found(f"App {app} does not exist")
        _, scale = await self.store.get_runtime(app)
        types = process_types(record)
        if not types:
            raise invalid_argument(f"App {app} has nothing to run yet: give it a source first")
        merged = default_scale(record) | {k: v for k, v in scale.items() if k in types}
        return merged

    async def start_app(self, app: str, *, resume: bool = False) -> list[SupervisedProcess]:
        """The app is meant to run (the user asked): every process of its scale is started that does not
        run. With `resume` the user asked nothing new (berthd's start, a change of scale): a process that
        ended by itself under its restart policy stays ended."""
        scale = await self.desired_scale(app)
        if resume:
            ended = await self.store.ended_processes(app)
        else:
            await self.store.set_desired(app, RUNNING)
            ended = set()
        wanted = {f"{kind}.{index}" for kind, count in scale.items() for index in range(1, count + 1)}
        await self._stop_processes(app, [p for p in self.processes_of(app) if p.name not in wanted])
        for name in sorted(wanted - ended, key=_order):
            current = self.processes.get((app, name))
            if current is not None and current.state not in (State.EXITED, State.FAILED, State.STOPPED):
                continue
            await self._supervise(app, name)
        return self.processes_of(app)

    async def redeploy(self, app: str) -> None:
        """New code is live: processes that run are replaced; the app is meant to run from now on."""
        await self._stop_processes(app, self.processes_of(app))
        await self.start_app(app)

    async def stop_app(self, app: str) -> None:
        await self.store.set_desired(app, STOPPED)
        await self._stop_processes(app, self.processes_of(app), forget=False)

    async def remove_app(self, app: str, keep_data: bool = False) -> None:
        await self.release_app(app)
        record = await self.store.get_app(app)
        if record is not None:
            runner, target = await self.runner_for(record)
            await runner.remove(target, keep_data)

    async def release_app(self, app: str) -> None:
        """Its processes stopped and forgotten, its log files closed: berthd holds nothing of it open."""
        await self._stop_processes(app, self.processes_of(app))
        for key in [k for k in self.logs if k[0] == app]:
            self.logs.pop(key).close()

    async def scale(self, app: str, counts: dict[str, int]) -> dict[str, int]:
        record = await self.store.get_app(app)
        if record is None:
            raise not_found(f"App {app} does not exist")
        types = process_types(record)
        unknown = [kind for kind in counts if kind not in types]
        if unknown:
            known = ", ".join(types) or "none yet"
            raise invalid_argument(f"unknown process type {unknown[0]!r}; {app} has: {known}")
        runner, _ = await self.runner_for(record)
        if not runner.features.scale and any(count > 1 for count in counts.values()):
            raise invalid_argument(f"{app} runs one {runner.name} process of each type: main=0 or main=1")
        _, scale = await self.store.get_runtime(app)
        scale = (default_scale(record) | scale) | counts
        await self.store.set_scale(app, scale)
        desired, _ = await self.store.get_runtime(app)
        if desired == RUNNING:
            await self.start_app(app, resume=True)
        return scale

    async def restart_for_config(self, app: str) -> list[str]:
        """The app's config changed: the processes that run with the old one are restarted (as
        ps:restart does, one stop and start each), and so are those an engine would restart with it.
        The others take the new config when they start: those starting now (`SupervisedProcess._launch`),
        those waiting to restart; stopped and ended ones stay so. The names of those restarted."""
        stale = [
            p
            for p in self.processes_of(app)
            if p.state == State.RUNNING or (p.state == State.BACKOFF and p.runner.features.engine_restarts)
        ]
        await self._stop_processes(app, stale, forget=False)
        for process in stale:
            await self._supervise(app, process.name)
        return [p.name for p in stale]

    async def restart_policy_changed(self, app: str, policy: RestartPolicy) -> None:
        for process in self.processes_of(app):
            process.policy = policy
            if process.handle is not None and process.runner.features.engine_restarts:
                await process.runner.restart_policy_changed(process.handle, str(policy))

    async def _stop_processes(
        self, app: str, processes: Iterable[SupervisedProcess], forget: bool = True
    ) -> None:
        async with trio.open_nursery() as nursery:
            for process in processes:
                nursery.start_soon(self._stop_one, app, process, forget)

    async def _stop_one(self, app: str, process: SupervisedProcess, forget: bool) -> None:
        """Stop it; keep it in the report as STOPPED unless it is gone for good (scaled down, destroyed)."""
        await process.stop()
        if not forget:
            process.mark_stopped()
        elif self.processes.get((app, process.name)) is process:
            del self.processes[(app, process.name)]
            self.ports.pop((app, process.name), None)

    async def _supervise(self, app: str, name: str) -> SupervisedProcess:
        assert self._nursery is not None
        record = await self.store.get_app(app)
        assert record is not None
        policy = RestartPolicy.parse(record.settings.restart_policy)
        runner, _ = await self.runner_for(record)

        async def build_spec() -> ProcessSpec:
            current = await self.store.get_app(app)
            if current is None:
                raise ValueError(f"App {app} no longer exists")
            spec = await runner.spec_for(await self.target_of(current), name)
            if runner.features.signals and wants_port(current):
                spec = self._with_port(spec)
            return spec

        async def save_handle(handle: Handle | None) -> None:
            await self.store.save_handle(app, name, msgspec.json.encode(handle) if handle else None)

        async def ended() -> None:
            await self.store.mark_ended(app, name)

        process = SupervisedProcess(
            app=app,
            name=name,
            runner=runner,
            build_spec=build_spec,
            log=self.log_of(app, name),
            policy=policy,
            save_handle=save_handle,
            ended=ended,
            stop_timeout=self.config.stop_timeout,
            config_generation=lambda: self.store.config_generation(app),
            counts=self.counts,
        )
        self.processes[(app, name)] = process
        await self._nursery.start(process.supervise)
        return process

    def _with_port(self, spec: ProcessSpec) -> ProcessSpec:
        """The process's PORT: the one its config or Procfile line gives, else a free one (the same
        as before a restart while it is still free), never one another process of berthd's has."""
        key = (spec.app, spec.process)
        given = spec.env.get("PORT", "")
        if given.isdigit():
            self.ports[key] = int(given)
            return spec
        taken = {port for other, port in self.ports.items() if other != key}
        self.ports[key] = free_port(taken, self.ports.get(key))
        return msgspec.structs.replace(spec, env={**spec.env, "PORT": str(self.ports[key])})

    async def report_detailed(self, app: str) -> list[dict[str, object]]:
        """The report, with what the runner can tell of each process (a container's state and health)."""
        engine_away: dict[str, str] = {}
        for process in self.processes_of(app):
            try:
                await process.refresh()  # the state of a container as its engine says it now
            except CommandError as exc:
                engine_away[process.name] = exc.message
        processes, rows = self.processes_of(app), self.report(app)  # no await between: the same ones
        for row, process in zip(rows, processes, strict=True):
            if process.name in engine_away:
                row["engine"] = engine_away[process.name]
            elif process.handle is not None:
                try:
                    row.update(await process.runner.inspect(process.handle))
                except CommandError as exc:
                    row["engine"] = exc.message
        return rows

    def report(self, app: str) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for process in self.processes_of(app):
            rows.append(
                {
                    "app": app,
                    "process": process.name,
                    "state": str(process.state),
                    "runner": process.runner.name,
                    "pid": int(process.handle.ref)
                    if process.handle and process.runner.features.signals
                    else None,
                    "ref": process.runner.shown_ref(process.handle) if process.handle else None,
                    "port": self.ports.get((app, process.name)),
                    "restarts": process.restarts,
                    "uptime_s": round(process.uptime, 1) if process.uptime is not None else None,
                    "last_exit_code": process.last_exit.code if process.last_exit else None,
                    "last_exit": process.last_exit.describe() if process.last_exit else None,
                    "last_error": process.last_error,
                    "restart_policy": str(process.policy),
                    "next_start_in_s": round(process.next_start_at - time.time(), 1)
                    if process.next_start_at
                    else None,
                }
            )
        return rows


def _order(name: str) -> tuple[str, int]:
    kind, _, index = name.partition(".")
    return kind, int(index) if index.isdigit() else 0
