"""Containers through a deploy daemon's Docker engine, behind the runner interface.

A container is named for its app (`nc_app_APP`), so after a berthd restart `start` finds the one that
is there instead of making a second. The engine does the restarting: the app's restart policy becomes
the container's (`always` is AppAPI's `unless-stopped`), so an ExApp keeps being restarted while berthd
is away, and `watch` tells the supervisor what the engine does (its restarts, its waits, the last exit
code) until the engine gives up. Every engine call is blocking and runs on a worker thread; an engine
that is down or refuses becomes `unavailable` with the daemon's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
import trio

from berthd.apps.launch import make_mounts, mount_variables, resolve_identity
from berthd.deploy.exapp import (
    ContainerRequest,
    app_host,
    container_name,
    container_request,
    free_port,
    volume_of,
)
from berthd.deploy.heartbeat import wait_heartbeat
from berthd.errors import CommandError, not_found
from berthd.log import LOG
from berthd.runners import (
    DaemonStatus,
    EngineLine,
    EngineRun,
    EngineSink,
    ExitStatus,
    Features,
    Handle,
    LineSink,
    OutputSink,
    ProcessSpec,
    Progress,
    Runner,
    RunnerError,
    RunnerHost,
    Target,
)
from berthd.runners.clients import ClientCache
from berthd.runners.docker import engine
from berthd.store.records import DaemonRecord

POLL = 0.5  # while starting
WATCH = 1.0  # while running: how soon berthd notices an exit, a restart, or the engine giving up
ENDED = ("exited", "dead")


def _docker() -> Any:
    import docker  # heavy: imported on first use

    return docker


class DockerRunner(Runner):
    name = "docker"
    features = Features(
        engine_logs=True, image_pull=True, fingerprint=True, engine=True, engine_restarts=True
    )

    def __init__(self, host: RunnerHost) -> None:
        super().__init__(host)
        # a new engine client costs a version round trip that makes dockerd run two programs
        self._clients: ClientCache[Any] = ClientCache(engine.client_for, lambda client: client.close())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._clients.keep(task_status=task_status)

    def _client_for(self, record: DaemonRecord) -> Any:
        """On a worker thread: the engine client of the daemon config."""
        return self._clients.of(record)

    async def _call(self, daemon: str, function: Callable[..., Any], *args: Any, abandon: bool = True) -> Any:
        record = await self.host.store.get_daemon(daemon)
        if record is None:
            raise not_found(f"no deploy daemon {daemon!r}")

        def run() -> Any:
            try:
                return function(self._client_for(record), *args)
            except RunnerError:
                raise
            except Exception as exc:  # noqa: BLE001 - every engine failure becomes one clear error
                raise engine.unavailable(daemon, exc) from None

        return await trio.to_thread.run_sync(run, abandon_on_cancel=abandon)

    async def spec_for(self, target: Target, process: str) -> ProcessSpec:
        record, daemon = target.app, _daemon_of(target)
        secret, port = await self.host.store.exapp_identity(record.name, lambda taken: free_port(taken))
        config = await self.host.store.get_config(record.name)
        # the mounts: folders of this host (checked against berthd's mount roots at each start, as for
        # native processes: nothing else is ever bound), at the path the user gave in the container
        app_dir, identity = self.host.app_dir(record.name), resolve_identity(record.settings.user)
        mounts = await trio.to_thread.run_sync(make_mounts, record.settings, app_dir, identity)
        config = {**config, **mount_variables([(mount, mount.path) for mount, _ in mounts])}
        request = msgspec.structs.replace(
            container_request(record, daemon, secret, port, config),
            restart_policy=engine_restart_policy(record.settings.restart_policy),
            binds={folder: mount.path for mount, folder in mounts},
        )
        options: dict[str, Any] = {"container": msgspec.to_builtins(request)}
        if record.source.detail.get("heartbeat") == "true":
            host = app_host(daemon)
            options["heartbeat"] = {"host": "127.0.0.1" if host == "0.0.0.0" else host, "port": port}
        return ProcessSpec(app=record.name, process=process, argv=[], options=options)

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle:
        request = msgspec.convert(spec.options["container"], ContainerRequest)
        # not abandoned on cancel: a create finishing after we stopped waiting would leave a container
        container_id = await self._call(request.daemon, _ensure_running, request, None, abandon=False)
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
            if status == "restarting" or status in ENDED:
                # it started and exited already: an exit like any other, which `watch` reports and the
                # engine's policy restarts or not; the container stays, and its logs say why
                return
            if health == "unhealthy":
                raise RunnerError(f"container {request.name} did not start: health check failed ({health})")
            if trio.current_time() >= deadline:
                raise RunnerError(
                    f"container {request.name} not healthy within {request.health_timeout:.0f} s (health: {health})"
                )
            await trio.sleep(POLL)

    async def recover(self, handle: Handle, output: OutputSink) -> bool:
        state = await self._call(handle.detail["daemon"], _state, handle.detail["name"])
        return bool(state and state["Status"] == "running")

    async def wait(self, handle: Handle) -> ExitStatus:
        return await self.watch(handle, lambda run: None)

    async def watch(self, handle: Handle, seen: EngineSink) -> ExitStatus:
        return await watch_engine(self.look, handle, seen)

    async def look(self, handle: Handle) -> EngineRun | None:
        run: EngineRun | None = await self._call(handle.detail["daemon"], _look, handle.ref)
        return run

    async def restart_policy_changed(self, handle: Handle, policy: str) -> None:
        await self._call(
            handle.detail["daemon"], _set_restart_policy, handle.ref, engine_restart_policy(policy)
        )

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

    def shown_ref(self, handle: Handle) -> str:
        return handle.ref[:12]

    async def prepare(self, target: Target, progress: Progress | None) -> None:
        image = target.app.source.detail["image"]
        await self._call(_daemon_of(target).name, _ensure_image, image, progress)

    async def remove(self, target: Target, keep_data: bool) -> None:
        volume = None if keep_data else volume_of(target.app)
        await self._call(_daemon_of(target).name, _remove_named, container_name(target.app.name), volume)

    async def logs(self, target: Target, tail: int) -> list[EngineLine]:
        name = container_name(target.app.name)
        return list(await self._call(_daemon_of(target).name, _logs, name, tail))

    async def follow_logs(self, target: Target, send: LineSink) -> None:
        streams: list[Any] = []
        try:
            await self._call(_daemon_of(target).name, _follow, container_name(target.app.name), send, streams)
        finally:
            for stream in streams:  # wakes the worker thread blocked on the engine's stream
                with contextlib.suppress(Exception):
                    stream.close()

    async def check(self, daemon: DaemonRecord) -> DaemonStatus:
        reachable, version, why = await trio.to_thread.run_sync(engine.ping, daemon, abandon_on_cancel=True)
        return DaemonStatus(reachable, version, why)

    async def fingerprint(self, daemon: DaemonRecord) -> dict[str, Any]:
        return dict(await self._call(daemon.name, lambda client: client.info()))

    async def check_image(self, daemon: DaemonRecord, image: str) -> None:
        await self._call(daemon.name, _check_image, image)


async def watch_engine(
    look: Callable[[Handle], Awaitable[EngineRun | None]], handle: Handle, seen: EngineSink
) -> ExitStatus:
    """`watch` for a container whose engine restarts it: what `look` says, until the engine gives up."""
    while True:
        try:
            run = await look(handle)
        except (RunnerError, CommandError):
            await trio.sleep(WATCH)  # the engine is away: the container may well still run
            continue
        if run is None:  # removed behind berthd's back (`docker rm -f` kills it)
            return ExitStatus(None, signal.SIGKILL)
        seen(run)
        if run.ended:
            return run.last_exit or ExitStatus(None, signal.SIGKILL)
        await trio.sleep(WATCH)


def engine_restart_policy(policy: str | None) -> str:
    """The app's restart policy (berthd's words; none is `always`) as the engine's, which applies it.

    `always` is `unless-stopped`, as AppAPI has it: a `ps:stop` is a manual stop, which even a restarted
    engine respects. berthd's `on-failure:N` gives up after N failures, the engine's after N restarts:
    N - 1 of them, and `on-failure:1` is `no` (neither restarts a clean exit). Unlike berthd's count of
    failures in a row, the engine's does not start over after a long run.
    """
    kind, _, count = (policy or "always").partition(":")
    if kind == "always":
        return "unless-stopped"
    if kind == "on-failure" and count:
        return "no" if int(count) == 1 else f"on-failure:{int(count) - 1}"
    return kind


def _policy_config(policy: str) -> dict[str, Any]:
    """`on-failure:2` as the engine's HostConfig has it."""
    name, _, count = policy.partition(":")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _daemon_of(target: Target) -> DaemonRecord:
    if target.daemon is None:
        raise RunnerError(f"{target.app.name} has no deploy daemon")
    return target.daemon


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


def _look(client: Any, name_or_id: str) -> EngineRun | None:
    """What the engine says of the container (None: it is gone)."""
    container = _find(client, name_or_id)
    return None if container is None else engine_run(container.attrs)


def engine_run(attrs: dict[str, Any]) -> EngineRun:
    """What the engine's inspect of a container (`attrs`) says of its run."""
    state = attrs["State"]
    looked_at = time.monotonic()
    restarting = bool(state.get("Restarting"))
    ended = state.get("Status") in ENDED and not restarting
    count = int(attrs.get("RestartCount") or 0)
    return EngineRun(
        looked_at=looked_at,
        restarting=restarting,
        ended=ended,
        # the engine counts a restart once it decides on it; berthd, once it is made
        restarts=max(0, count - 1) if restarting else count,
        started_at=_timestamp(state.get("StartedAt")),
        # a new run clears the exit code: known while the engine waits, and once it has given up
        last_exit=ExitStatus(int(state.get("ExitCode") or 0)) if restarting or ended else None,
    )


def _timestamp(text: str | None) -> float | None:
    """An engine time (`2026-12-02T14:20:42.343123456Z`; the year 1 when never) as epoch seconds."""
    if not text or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _set_restart_policy(client: Any, container_id: str, policy: str) -> None:
    container = _find(client, container_id)
    if container is not None:
        container.update(restart_policy=_policy_config(policy))


def _on_engine(client: Any, image: str) -> bool:
    try:
        client.images.get(image)
    except _docker().errors.ImageNotFound:
        return False
    return True


def _check_image(client: Any, image: str) -> None:
    """On the engine already, or in its registry (what a pull would fetch, asked without pulling)."""
    docker = _docker()
    if _on_engine(client, image):
        return
    try:
        client.api.inspect_distribution(image)
    except docker.errors.APIError as exc:
        why = exc.explanation or str(exc)
        raise RunnerError(f"image {image} is not on the engine, and it cannot be pulled: {why}") from None


def _ensure_image(client: Any, image: str, progress: Progress | None) -> None:
    docker = _docker()
    if _on_engine(client, image):
        return
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


SPEC_LABEL = "berthd.spec"


def spec_digest(request: ContainerRequest) -> str:
    """What the container was made from (image, environment, command, mounts ...), as a digest kept in
    a label: a stopped container made from another request (the app's config changed) is made anew.
    Left out: what the engine changes in place (the restart policy) and what is not the container's."""
    made_of = msgspec.structs.replace(request, restart_policy="", labels={}, health_timeout=0.0)
    return hashlib.sha256(msgspec.json.encode(made_of)).hexdigest()


def _ensure_running(client: Any, request: ContainerRequest, progress: Progress | None) -> str:
    """The app's container, running: the existing one when there is one, never a second. One that is
    not running and was made from another request is replaced (its volume kept); one that runs is
    taken as it is (a restarted berthd finds it so: nothing changed the app while berthd was away)."""
    docker = _docker()
    container = _find(client, request.name)
    stale = container is not None and container.labels.get(SPEC_LABEL) != spec_digest(request)
    if stale and container.status not in ("running", "restarting"):
        container.remove(force=True)
        container = None
    if container is None:
        _ensure_image(client, request.image, progress)
        container = _create(client, request)
    else:
        _adopt_restart_policy(container, request)
    # a restarting container is the engine's to start: starting it would reset its restart count
    if container.status not in ("running", "restarting"):
        try:
            container.start()
        except docker.errors.APIError as exc:
            container.remove(force=True)
            raise RunnerError(f"container {request.name} did not start: {exc.explanation or exc}") from None
    return str(container.id)


def _adopt_restart_policy(container: Any, request: ContainerRequest) -> None:
    """A container made before the app's policy changed takes the new one. An engine (or a proxy before
    it) that refuses the update leaves the old one in force, which is said in the log: the container
    still runs, and the engine still decides its restarts."""
    wanted = _policy_config(request.restart_policy)
    current = container.attrs["HostConfig"].get("RestartPolicy")
    if current == wanted:
        return
    try:
        container.update(restart_policy=wanted)
    except _docker().errors.APIError as exc:
        LOG.warning(
            "container %s keeps its restart policy %s, the engine refused %s: %s",
            request.name,
            current,
            wanted,
            exc.explanation or exc,
        )


def _create(client: Any, request: ContainerRequest) -> Any:
    docker = _docker()
    options: dict[str, Any] = {
        "name": request.name,
        "hostname": request.hostname,
        "environment": request.env,
        "volumes": {
            request.volume: {"bind": request.volume_target, "mode": "rw"},
            **{folder: {"bind": target, "mode": "rw"} for folder, target in request.binds.items()},
        },
        "network_mode": request.network_mode,
        "restart_policy": _policy_config(request.restart_policy),
        "labels": {**request.labels, SPEC_LABEL: spec_digest(request)},
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


def _logs(client: Any, name: str, tail: int) -> list[EngineLine]:
    container = _find(client, name)
    if container is None:
        return []
    lines: list[EngineLine] = []
    for stream, flags in (
        ("stdout", {"stdout": True, "stderr": False}),
        ("stderr", {"stdout": False, "stderr": True}),
    ):
        raw = container.logs(timestamps=True, tail=tail or "all", **flags)
        for line in raw.decode("utf-8", "replace").splitlines():
            stamp, _, text = line.partition(" ")
            lines.append(EngineLine(stamp, stream, text))
    lines.sort(key=lambda line: (line.timestamp, line.stream))
    return lines[-tail:] if tail else []
