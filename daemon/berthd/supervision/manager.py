"""All supervised processes of all apps: started from what the store says should run, stopped on demand.

Desired state (running or not, and how many of each process type) lives in the store, so berthd
started after a crash brings back exactly what was meant to run. Each process is one task in this
manager's nursery, supervised by `berthd.supervision.supervisor.SupervisedProcess`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import trio

from berthd.apps.launch import (
    default_scale,
    environment,
    mount_directories,
    process_types,
    resolve_identity,
    working_directory,
)
from berthd.config import Config
from berthd.deploy.exapp import app_host, container_name, container_request, free_port, volume_name
from berthd.errors import CommandError, invalid_argument, not_found
from berthd.log import LOG
from berthd.runners import Handle, ProcessSpec, Runner
from berthd.runners.docker import engine as dockerclient
from berthd.runners.docker.runner import DockerRunner
from berthd.runners.manual.runner import ManualRunner
from berthd.runners.native.reaper import Reaper, become_subreaper
from berthd.runners.native.runner import NativeRunner
from berthd.runners.native.spawn import Spawner
from berthd.store import Store
from berthd.store.records import AppRecord, DaemonRecord
from berthd.supervision.logs import LogFile
from berthd.supervision.supervisor import RestartPolicy, State, SupervisedProcess

RUNNING = "running"
STOPPED = "stopped"


class ProcessManager:
    def __init__(self, config: Config, store: Store, data_dir: Path) -> None:
        self.config = config
        self.store = store
        self.data_dir = data_dir
        self.spawner: Spawner | None = None  # its thread lives exactly as long as `run`
        self.reaper = Reaper()
        self.processes: dict[tuple[str, str], SupervisedProcess] = {}
        self.logs: dict[tuple[str, str], LogFile] = {}
        self._nursery: trio.Nursery | None = None
        self.native: NativeRunner | None = None
        self.docker = DockerRunner(self._docker_client, dockerclient.unavailable)
        self._clients: dict[str, tuple[bytes, Any]] = {}
        self._clients_lock = threading.Lock()
        self.manual = ManualRunner()

    def _docker_client(self, daemon: str) -> Any:
        """On a worker thread: the engine client of a daemon config, kept while the config is the same
        (a new client costs a version round trip that makes dockerd run two programs)."""
        record = trio.from_thread.run(self.store.get_daemon, daemon)
        if record is None:
            raise not_found(f"no deploy daemon {daemon!r}")
        fingerprint = msgspec.json.encode(record)
        with self._clients_lock:
            cached = self._clients.get(daemon)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
        client = dockerclient.client_for(record)
        with self._clients_lock:
            old = self._clients.get(daemon)
            self._clients[daemon] = (fingerprint, client)
        if old is not None and old[1] is not client:
            old[1].close()
        return client

    async def daemon_for(self, record: AppRecord) -> DaemonRecord:
        """The deploy daemon of an image app: its own, else the default."""
        name = record.settings.daemon or record.source.detail.get("daemon")
        daemon = await (self.store.get_daemon(name) if name else self.store.get_default_daemon())
        if daemon is None:
            raise not_found(
                f"no deploy daemon {name!r}" if name else "no default deploy daemon: register one"
            )
        return daemon

    # life of the manager

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        become_subreaper()
        self.spawner = Spawner()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.native = NativeRunner(nursery, self.spawner, self.reaper)
                nursery.start_soon(self.reaper.run)
                await self._recover()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.spawner.close()
            for log in self.logs.values():
                log.close()

    async def _recover(self) -> None:
        """End what a previous berthd left behind, then start what should run."""
        assert self.native is not None
        for app, process, raw in await self.store.all_handles():
            handle = msgspec.json.decode(raw, type=Handle)
            if handle.runner == self.native.name:
                await self.native.recover(handle, self.log_of(app, process).write)
            # containers are found again by their name when their app starts
            await self.store.save_handle(app, process, None)
        for app in await self.store.apps_desired_running():
            try:
                await self.start_app(app)
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
            self.logs[key] = LogFile(path, self.config.log_max_bytes, self.config.log_backups)
        return self.logs[key]

    async def runner_for(self, record: AppRecord) -> Runner:
        assert self.native is not None
        if record.source.kind != "image":
            return self.native
        daemon = await self.daemon_for(record)
        return self.manual if daemon.deploy_id == "manual-install" else self.docker

    async def image_spec(self, record: AppRecord, name: str) -> ProcessSpec:
        daemon = await self.daemon_for(record)
        host = app_host(daemon)
        secret, port = await self.store.exapp_identity(record.name, lambda taken: free_port(taken))
        config = await self.store.get_config(record.name)
        options: dict[str, Any]
        if daemon.deploy_id == "manual-install":
            options = {"host": host, "port": port}
        else:
            request = container_request(record, daemon, secret, port, config)
            options = {"container": msgspec.to_builtins(request)}
            if record.source.detail.get("heartbeat") == "true":
                options["heartbeat"] = {"host": "127.0.0.1" if host == "0.0.0.0" else host, "port": port}
        return ProcessSpec(app=record.name, process=name, argv=[], options=options)

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

    async def start_app(self, app: str) -> list[SupervisedProcess]:
        scale = await self.desired_scale(app)
        await self.store.set_desired(app, RUNNING)
        wanted = {f"{kind}.{index}" for kind, count in scale.items() for index in range(1, count + 1)}
        await self._stop_processes(app, [p for p in self.processes_of(app) if p.name not in wanted])
        for name in sorted(wanted, key=_order):
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
        await self._stop_processes(app, self.processes_of(app))
        record = await self.store.get_app(app)
        if record is not None and record.source.kind == "image":
            daemon = await self.daemon_for(record)
            if daemon.deploy_id == "docker-install":
                volume = None if keep_data else volume_name(app)
                await self.docker.remove_by_name(daemon.name, container_name(app), volume)
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
        if record.source.kind == "image" and any(count > 1 for count in counts.values()):
            raise invalid_argument(f"{app} runs as one container ({container_name(app)}): main=0 or main=1")
        _, scale = await self.store.get_runtime(app)
        scale = (default_scale(record) | scale) | counts
        await self.store.set_scale(app, scale)
        desired, _ = await self.store.get_runtime(app)
        if desired == RUNNING:
            await self.start_app(app)
        return scale

    async def restart_policy_changed(self, app: str, policy: RestartPolicy) -> None:
        for process in self.processes_of(app):
            process.policy = policy

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

    async def _supervise(self, app: str, name: str) -> SupervisedProcess:
        assert self._nursery is not None
        record = await self.store.get_app(app)
        assert record is not None
        policy = RestartPolicy.parse(record.settings.restart_policy)
        kind = name.split(".", 1)[0]

        async def build_spec() -> ProcessSpec:
            current = await self.store.get_app(app)
            if current is None:
                raise ValueError(f"App {app} no longer exists")
            if current.source.kind == "image":
                return await self.image_spec(current, name)
            command = process_types(current).get(kind)
            if command is None:
                raise ValueError(f"process type {kind} is gone from {app}")
            identity = resolve_identity(current.settings.user)
            app_dir = self.data_dir / "apps" / app
            env = environment(current, await self.store.get_config(app), identity, command.env)
            env.update(await trio.to_thread.run_sync(mount_directories, current, app_dir, identity))
            env["BERTH_PROCESS"] = name
            cwd = working_directory(current, app_dir)
            await trio.to_thread.run_sync(lambda: app_dir.mkdir(parents=True, exist_ok=True))
            return ProcessSpec(
                app=app, process=name, argv=command.argv, cwd=cwd, env=env, user=current.settings.user
            )

        async def save_handle(handle: Handle | None) -> None:
            await self.store.save_handle(app, name, msgspec.json.encode(handle) if handle else None)

        process = SupervisedProcess(
            app=app,
            name=name,
            runner=await self.runner_for(record),
            build_spec=build_spec,
            log=self.log_of(app, name),
            policy=policy,
            save_handle=save_handle,
            stop_timeout=self.config.stop_timeout,
        )
        self.processes[(app, name)] = process
        await self._nursery.start(process.supervise)
        return process

    async def report_detailed(self, app: str) -> list[dict[str, object]]:
        """The report, with what the runner can tell of each process (a container's state and health)."""
        rows = self.report(app)
        for row, process in zip(rows, self.processes_of(app), strict=True):
            if process.handle is not None and process.runner is not self.native:
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
                    if process.handle and process.handle.runner == "native"
                    else None,
                    "ref": (
                        process.handle.ref[:12] if process.handle.runner == "docker" else process.handle.ref
                    )
                    if process.handle
                    else None,
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
