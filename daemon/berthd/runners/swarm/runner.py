"""Apps as Docker Swarm services through a `swarm-install` deploy daemon (a swarm manager).

A service is named for its app (`berthd_swarm_APP`) and labelled with it, so a restarted berthd finds the
one that is there (by label first, then by name) and never makes a second. A changed image or config is a
rolling update under `update_config` (one task at a time, a delay, a monitor window, rollback on
failure); `start` waits until the update converges or the swarm has rolled it back, and says which.
`stop` scales to zero; `remove` removes the service and nothing else. Every engine call is blocking and
runs on a worker thread (through the Docker runner's `_call`), an unreachable manager is `unavailable`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec
import trio

from berthd.deploy.exapp import ContainerRequest, container_request
from berthd.log import LOG
from berthd.runners import (
    DaemonStatus,
    EngineLine,
    EngineRun,
    ExitStatus,
    Features,
    Handle,
    OutputSink,
    ProcessSpec,
    Progress,
    RunnerError,
    Target,
)
from berthd.runners.docker import engine
from berthd.runners.docker.runner import DockerRunner, _daemon_of, _docker

APP_LABEL = "berthd.app"
SPEC_LABEL = "berthd.spec"
POLL = 0.5
CONVERGE_TIMEOUT_S = 120.0
UPDATE_DELAY_S = 1.0
MONITOR_S = 3.0
DONE_STATES = ("completed", "rollback_completed", "rollback_paused", "paused")


def service_name(app: str) -> str:
    return f"berthd_swarm_{app}"


class ServiceRequest(msgspec.Struct, frozen=True, kw_only=True):
    daemon: str
    app: str
    image: str
    env: list[str]
    command: list[str] | None = None
    replicas: int = 1


def spec_digest(request: ServiceRequest) -> str:
    """What the service is made of, less its replica count (scaling is not an update)."""
    made_of = msgspec.structs.replace(request, replicas=0)
    return hashlib.sha256(msgspec.json.encode(made_of)).hexdigest()


class SwarmRunner(DockerRunner):
    name = "swarm"
    features = Features(engine_logs=True, fingerprint=True, engine=True, engine_restarts=True, scale=True)

    async def spec_for(self, target: Target, process: str) -> ProcessSpec:
        record, daemon = target.app, _daemon_of(target)
        secret, port = await self.host.store.exapp_identity(record.name, lambda taken: 0)
        config = await self.host.store.get_config(record.name)
        container: ContainerRequest = container_request(record, daemon, secret, port, config)
        request = ServiceRequest(
            daemon=daemon.name,
            app=record.name,
            image=container.image,
            env=container.env,
            command=container.command,
        )
        return ProcessSpec(
            app=record.name, process=process, argv=[], options={"service": msgspec.to_builtins(request)}
        )

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle:
        request = msgspec.convert(spec.options["service"], ServiceRequest)
        service_id, updating = await self._call(request.daemon, _ensure_service, request, abandon=False)
        outcome = await self._converge(request.daemon, service_id, updating, spec.app)
        if outcome == "rollback_completed":
            raise RunnerError(f"the update of {spec.app} failed and the swarm rolled it back")
        return Handle(
            runner=self.name,
            ref=service_id,
            started_at=time.time(),
            detail={"daemon": request.daemon, "name": service_name(spec.app)},
        )

    async def _converge(self, daemon: str, service_id: str, updating: bool, app: str) -> str:
        """Until the service's tasks run (a create) or its update is over (an update): the outcome."""
        deadline = trio.current_time() + CONVERGE_TIMEOUT_S
        last = ""
        while True:
            state = await self._call(daemon, _update_state, service_id)
            if state != last:
                LOG.info("swarm service of %s: update %s", app, state or "none")
                last = state
            if updating and state in DONE_STATES:
                return str(state)
            if not updating and await self._call(daemon, _running_tasks, service_id) >= 1:
                return "created"
            if trio.current_time() >= deadline:
                raise RunnerError(f"the service of {app} did not converge within {CONVERGE_TIMEOUT_S:.0f} s")
            await trio.sleep(POLL)

    async def recover(self, handle: Handle, output: OutputSink) -> bool:
        return bool(await self._call(handle.detail["daemon"], _find_service, handle.detail["name"]))

    async def look(self, handle: Handle) -> EngineRun | None:
        found = await self._call(handle.detail["daemon"], _find_service, handle.detail["name"])
        if found is None:
            return None
        return EngineRun(
            looked_at=time.monotonic(), restarting=False, restarts=0, started_at=handle.started_at
        )

    async def restart_policy_changed(self, handle: Handle, policy: str) -> None:
        return None

    async def stop(self, handle: Handle, timeout: float, signum: int = 15) -> ExitStatus | None:
        await self._call(handle.detail["daemon"], _scale, handle.detail["name"], 0)
        return ExitStatus(0)

    async def destroy(self, handle: Handle, keep_data: bool = False) -> None:
        await self._call(handle.detail["daemon"], _remove_service, handle.detail["name"])

    async def inspect(self, handle: Handle) -> dict[str, object]:
        tasks = await self._call(handle.detail["daemon"], _tasks, handle.detail["name"])
        return {"service_id": handle.ref[:12], "tasks": tasks}

    async def prepare(self, target: Target, progress: Progress | None) -> None:
        return None  # each node pulls for itself; the image is checked when the service is created

    async def remove(self, target: Target, keep_data: bool) -> None:
        await self._call(_daemon_of(target).name, _remove_service, service_name(target.app.name))

    async def logs(self, target: Target, tail: int) -> list[EngineLine]:
        return list(await self._call(_daemon_of(target).name, _logs, service_name(target.app.name), tail))

    async def check(self, daemon: Any) -> DaemonStatus:
        status = await super().check(daemon)
        if not status.reachable:
            return status
        info = await self._call(daemon.name, lambda client: client.info())
        swarm = info.get("Swarm") or {}
        if not swarm.get("ControlAvailable"):
            return DaemonStatus(False, status.version, "the engine is not a swarm manager")
        return status


# blocking engine calls (worker threads)


def _find_service(client: Any, name: str) -> Any:
    app = name.removeprefix("berthd_swarm_")
    found = client.services.list(filters={"label": f"{APP_LABEL}={app}"})
    if not found:
        found = [s for s in client.services.list(filters={"name": name}) if s.name == name]
    return found[0] if found else None


def _service_options(request: ServiceRequest) -> dict[str, Any]:
    types = _docker().types
    return {
        "image": request.image,
        "name": service_name(request.app),
        "env": request.env,
        "command": request.command,
        "labels": {APP_LABEL: request.app, SPEC_LABEL: spec_digest(request)},
        "networks": ["host"],
        "update_config": types.UpdateConfig(
            parallelism=1,
            delay=int(UPDATE_DELAY_S * 1e9),
            failure_action="rollback",
            monitor=int(MONITOR_S * 1e9),
            order="stop-first",
        ),
        "rollback_config": types.RollbackConfig(parallelism=1, monitor=int(MONITOR_S * 1e9)),
        "restart_policy": types.RestartPolicy(condition="any", delay=int(1e9)),
    }


def _ensure_service(client: Any, request: ServiceRequest) -> tuple[str, bool]:
    """The app's service, created or (its spec changed) updated: its id, and whether an update began."""
    docker = _docker()
    service = _find_service(client, service_name(request.app))
    options = _service_options(request)
    try:
        if service is None:
            mode = docker.types.ServiceMode("replicated", replicas=max(1, request.replicas))
            service = client.services.create(mode=mode, **options)
            return str(service.id), False
        if service.attrs["Spec"].get("Labels", {}).get(SPEC_LABEL) == spec_digest(request):
            if _replicas(service) == 0:
                service.scale(max(1, request.replicas))
            return str(service.id), False
        options.pop("name")
        options.pop("networks")
        # a stopped service (scaled to 0) has no task to update: it comes back with the update
        running = _replicas(service)
        replicas = running or max(1, request.replicas)
        service.update(mode=docker.types.ServiceMode("replicated", replicas=replicas), **options)
        return str(service.id), running > 0  # from zero tasks there is nothing to roll: a create
    except docker.errors.APIError as exc:
        raise RunnerError(f"cannot deploy the service of {request.app}: {exc.explanation or exc}") from None


def _replicas(service: Any) -> int:
    return int(service.attrs["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0))


def _update_state(client: Any, service_id: str) -> str:
    service = client.services.get(service_id)
    return str((service.attrs.get("UpdateStatus") or {}).get("State", ""))


def _running_tasks(client: Any, service_id: str) -> int:
    tasks = client.services.get(service_id).tasks(filters={"desired-state": "running"})
    return sum(1 for task in tasks if task["Status"]["State"] == "running")


def _scale(client: Any, name: str, replicas: int) -> None:
    service = _find_service(client, name)
    if service is not None:
        service.scale(replicas)


def _remove_service(client: Any, name: str) -> None:
    service = _find_service(client, name)
    if service is not None:
        service.remove()


def _tasks(client: Any, name: str) -> list[dict[str, str]]:
    service = _find_service(client, name)
    if service is None:
        return []
    nodes = {node.id: node.attrs["Description"]["Hostname"] for node in client.nodes.list()}
    return [
        {
            "node": nodes.get(task.get("NodeID", ""), task.get("NodeID", "")),
            "state": task["Status"]["State"],
            "desired_state": task["DesiredState"],
            "error": task["Status"].get("Err", ""),
        }
        for task in service.tasks()
    ]


def _logs(client: Any, name: str, tail: int) -> list[EngineLine]:
    service = _find_service(client, name)
    if service is None:
        return []
    raw = b"".join(service.logs(stdout=True, stderr=True, timestamps=True, tail=tail or "all"))
    lines = []
    for line in raw.decode("utf-8", "replace").splitlines():
        stamp, _, text = line.partition(" ")
        lines.append(EngineLine(stamp, "stdout", text))
    return lines[-tail:] if tail else []


__all__ = ["SwarmRunner", "engine", "service_name"]
