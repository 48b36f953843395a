"""Containers through a deploy daemon's Docker engine, behind the runner interface.

A container is named for its app (`nc_app_APP`), so after a berthd restart `start` finds the one that
is there instead of making a second; Docker's own restart policy (`unless-stopped`) keeps it running,
and `wait` returns only when the engine has given up on it. Every engine call is blocking and runs on
a worker thread; an engine that is down or refuses becomes `unavailable` with the daemon's name.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from berthd.deploy.heartbeat import wait_heartbeat
from berthd.errors import CommandError
from berthd.runners import ExitStatus, Handle, OutputSink, ProcessSpec, RunnerError

HEALTH_TIMEOUT = 120.0
POLL = 0.5  # while starting
WATCH = 2.0  # while running: how soon berthd notices the engine gave up on a container


class ContainerRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the engine needs to create the container, in the ExApp contract's terms."""

    daemon: str
    image: str
    name: str
    hostname: str
    env: list[str]  # "KEY=VALUE", in order
    volume: str
    volume_target: str
    network_mode: str
    restart_policy: str = "unless-stopped"
    gpu: str = "cpu"  # cpu, cuda, rocm
    command: list[str] | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    health_timeout: float = HEALTH_TIMEOUT


ClientFactory = Callable[[str], Any]  # daemon name -> docker.DockerClient (blocking)
Progress = Callable[[str, int | None, int | None], None]


def _docker() -> Any:
    import docker  # heavy: imported on first use

    return docker


class DockerRunner:
    name = "docker"

    def __init__(self, client_for: ClientFactory, unavailable: Callable[[str, Exception], Exception]) -> None:
        self._client_for = client_for
        self._unavailable = unavailable

    async def _call(self, daemon: str, function: Callable[..., Any], *args: Any, abandon: bool = True) -> Any:
        def run() -> Any:
            try:
                return function(self._client_for(daemon), *args)
            except RunnerError:
                raise
            except Exception as exc:  # noqa: BLE001 - every engine failure becomes one clear error
                raise self._unavailable(daemon, exc) from None

        return await trio.to_thread.run_sync(run, abandon_on_cancel=abandon)

    async def start(self, spec: ProcessSpec, output: OutputSink, progress: Progress | None = None) -> Handle:
        request = msgspec.convert(spec.options["container"], ContainerRequest)
        # not abandoned on cancel: a create finishing after we stopped waiting would leave a container
        container_id = await self._call(request.daemon, _ensure_running, request, progress, abandon=False)
        try:
            await self._wait_healthy(request, container_id)
            heartbeat = spec.options.get("heartbeat")
            if heartbeat:
                host, port = str(heartbeat["host"]), int(heartbeat["port"])
                answered = await trio.to_thread.run_sync(
                    wait_heartbeat, host, port, request.health_timeout, abandon_on_cancel=True
                )
                if not answered:
                    raise RunnerError(f"{spec.app} gave no heartbeat at http://{host}:{port}/heartbeat")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._call(request.daemon, _remove, container_id, False)
            raise
        return Handle(
            runner=self.name,
            ref=container_id,
            started_at=time.time(),
            detail={"daemon": request.daemon, "name": request.name},
        )

    async def _wait_healthy(self, request: ContainerRequest, container_id: str) -> None:
        deadline = trio.current_time() + request.health_timeout
        while True:
            state = await self._call(request.daemon, _state, container_id)
            if state is None:
                raise RunnerError(f"container {request.name} vanished while starting")
            status, health = state["Status"], (state.get("Health") or {}).get("Status")
            if status == "running" and health in (None, "healthy"):
                return
            if status in ("exited", "dead") or health == "unhealthy":
                why = (
                    f"health check failed ({health})"
                    if health == "unhealthy"
                    else f"it exited ({state.get('ExitCode')})"
                )
                raise RunnerError(f"container {request.name} did not start: {why}")
            if trio.current_time() >= deadline:
                raise RunnerError(
                    f"container {request.name} not healthy within {request.health_timeout:.0f} s (health: {health})"
                )
            await trio.sleep(POLL)

    async def recover(self, handle: Handle, output: OutputSink) -> bool:
        state = await self._call(handle.detail["daemon"], _state, handle.detail["name"])
        return bool(state and state["Status"] == "running")

    async def wait(self, handle: Handle) -> ExitStatus:
        daemon = handle.detail["daemon"]
        while True:
            try:
                state = await self._call(daemon, _state, handle.ref)
            except (RunnerError, CommandError):
                await trio.sleep(WATCH)  # the engine is away: the container may well still run
                continue
            if state is None:
                return ExitStatus(None, 9)
            if state["Status"] in ("exited", "dead") and not state.get("Restarting"):
                return ExitStatus(int(state.get("ExitCode", 1)))
            await trio.sleep(WATCH)

    async def stop(self, handle: Handle, timeout: float, signum: int = 15) -> ExitStatus | None:
        daemon = handle.detail["daemon"]
        code = await self._call(daemon, _stop, handle.ref, timeout)
        return ExitStatus(code) if code is not None else None

    async def destroy(self, handle: Handle, keep_data: bool = False) -> None:
        await self._call(handle.detail["daemon"], _remove, handle.ref, not keep_data)

    async def inspect(self, handle: Handle) -> dict[str, object]:
        state = await self._call(handle.detail["daemon"], _state, handle.ref)
        if state is None:
            return {"container_id": handle.ref[:12], "container_state": "gone"}
        return {
            "container_id": handle.ref[:12],
            "container_state": state["Status"],
            "health": (state.get("Health") or {}).get("Status"),
            "restarting": state.get("Restarting", False),
        }

    async def remove_by_name(self, daemon: str, name: str, volume: str | None) -> bool:
        return bool(await self._call(daemon, _remove_named, name, volume))

    async def logs(self, daemon: str, name: str, tail: int) -> list[tuple[str, str, str]]:
        return list(await self._call(daemon, _logs, name, tail))

    async def engine_info(self, daemon: str) -> dict[str, Any]:
        return dict(await self._call(daemon, lambda client: client.info()))

    async def ensure_image(self, daemon: str, image: str, progress: Progress | None) -> None:
        await self._call(daemon, _ensure_image, image, progress)

    async def follow_logs(self, daemon: str, name: str, send: Callable[[str, str], None]) -> None:
        """New lines of the container's output, as the engine streams them, until cancelled."""
        streams: list[Any] = []
        try:
            await self._call(daemon, _follow, name, send, streams)
        finally:
            for stream in streams:  # wakes the worker thread blocked on the engine's stream
                with contextlib.suppress(Exception):
                    stream.close()


# blocking engine calls (worker threads)


def _find(client: Any, name_or_id: str) -> Any:
    docker = _docker()
    try:
        return client.containers.get(name_or_id)
    except docker.errors.NotFound:
        return None


def _state(client: Any, name_or_id: str) -> dict[str, Any] | None:
    container = _find(client, name_or_id)
    return dict(container.attrs["State"]) if container is not None else None


def _ensure_image(client: Any, image: str, progress: Progress | None) -> None:
    docker = _docker()
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise RunnerError(f"cannot pull {image}: {event['error']}")
            if progress is not None:
                detail = event.get("progressDetail") or {}
                progress(
                    f"pulling {event.get('status', '')}".strip(), detail.get("current"), detail.get("total")
                )
    except docker.errors.APIError as exc:
        raise RunnerError(f"cannot pull {image}: {exc.explanation or exc}") from None


def _ensure_running(client: Any, request: ContainerRequest, progress: Progress | None) -> str:
    """The app's container, running: the existing one when there is one, never a second."""
    docker = _docker()
    container = _find(client, request.name)
    if container is None:
        _ensure_image(client, request.image, progress)
        container = _create(client, request)
    if container.status != "running":
        try:
            container.start()
        except docker.errors.APIError as exc:
            container.remove(force=True)
            raise RunnerError(f"container {request.name} did not start: {exc.explanation or exc}") from None
    return str(container.id)


def _create(client: Any, request: ContainerRequest) -> Any:
    docker = _docker()
    options: dict[str, Any] = {
        "name": request.name,
        "hostname": request.hostname,
        "environment": request.env,
        "volumes": {request.volume: {"bind": request.volume_target, "mode": "rw"}},
        "network_mode": request.network_mode,
        "restart_policy": {"Name": request.restart_policy},
        "labels": request.labels,
        "detach": True,
    }
    if request.command:
        options["command"] = request.command
    if request.gpu == "cuda":
        options["device_requests"] = [
            docker.types.DeviceRequest(driver="nvidia", count=-1, capabilities=[["compute", "utility"]])
        ]
    elif request.gpu == "rocm":
        options["devices"] = ["/dev/kfd:/dev/kfd:rwm", "/dev/dri:/dev/dri:rwm"]
    try:
        return client.containers.create(request.image, **options)
    except docker.errors.APIError as exc:
        raise RunnerError(f"cannot create container {request.name}: {exc.explanation or exc}") from None


def _stop(client: Any, container_id: str, timeout: float) -> int | None:
    container = _find(client, container_id)
    if container is None:
        return None
    container.stop(timeout=max(0, int(timeout)))
    container.reload()
    return int(container.attrs["State"].get("ExitCode", 0))


def _remove(client: Any, container_id: str, with_volumes: bool) -> None:
    container = _find(client, container_id)
    if container is not None:
        container.remove(force=True, v=with_volumes)


def _remove_named(client: Any, name: str, volume: str | None) -> bool:
    docker = _docker()
    container = _find(client, name)
    if container is not None:
        container.remove(force=True)
    if volume:
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(volume).remove(force=True)
    return container is not None


def _follow(client: Any, name: str, send: Callable[[str, str], None], streams: list[Any]) -> None:
    container = _find(client, name)
    if container is None:
        return
    since = int(time.time())
    stream = container.logs(stream=True, follow=True, since=since, stdout=True, stderr=True)
    streams.append(stream)
    pending = b""
    for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            send("stdout", line.decode("utf-8", "replace"))


def _logs(client: Any, name: str, tail: int) -> list[tuple[str, str, str]]:
    container = _find(client, name)
    if container is None:
        return []
    lines: list[tuple[str, str, str]] = []
    for stream, flags in (
        ("stdout", {"stdout": True, "stderr": False}),
        ("stderr", {"stdout": False, "stderr": True}),
    ):
        raw = container.logs(timestamps=True, tail=tail or "all", **flags)
        for line in raw.decode("utf-8", "replace").splitlines():
            stamp, _, text = line.partition(" ")
            lines.append((stamp, stream, text))
    lines.sort()
    return lines[-tail:] if tail else []
