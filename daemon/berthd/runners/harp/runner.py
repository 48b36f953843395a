"""`docker-install --harp`: ExApps on the Docker engine behind HaRP, made by HaRP.

Everything goes through `HarpClient` and only through the calls HaRP offers a Docker daemon:
`/docker/exapp/*` and the Engine API its haproxy passes through (container inspect and logs, `_ping`, image
inspect and pull). A berthd restarted finds its ExApp with `exists`: never a second one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from berthd.deploy.exapp import app_host, compute_device, exapp_env, free_port, harp_route_host
from berthd.deploy.heartbeat import wait_heartbeat
from berthd.errors import CommandError
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
from berthd.runners.docker.runner import engine_restart_policy, engine_run, watch_engine
from berthd.runners.harp.base import HarpBase, daemon_of, exapp_name
from berthd.runners.harp.client import PULL_TIMEOUT_S, WAIT_TIMEOUT_S, HarpClient, frames
from berthd.store.records import DaemonRecord


class HarpRunner(HarpBase):
    """`docker-install --harp`: containers on the Docker engine behind HaRP, made by HaRP."""

    name = "harp"
    features = Features(engine_logs=True, image_pull=True, engine=True, engine_restarts=True)

    async def spec_for(self, target: Target, process: str) -> ProcessSpec:
        record, daemon = target.app, daemon_of(target)
        if record.settings.args:
            raise RunnerError(
                f"{record.name}: HaRP runs an image's own command and takes no other; unset it with"
                f" apps:set {record.name} args ''"
            )
        secret, port = await self.host.store.exapp_identity(record.name, lambda taken: free_port(taken))
        config = await self.host.store.get_config(record.name)
        image = record.source.detail["image"]
        create: dict[str, Any] = {
            **exapp_name(record.name),
            "image_id": image,
            "network_mode": daemon.deploy_config.net or "host",
            "environment_variables": exapp_env(record, daemon, secret, port, config),
            # HaRP sets only the policy's name (`on-failure`, never its count of retries)
            "restart_policy": engine_restart_policy(record.settings.restart_policy).partition(":")[0],
            "compute_device": compute_device(daemon),
            "mount_points": [],
            "resource_limits": {},
        }
        options: dict[str, Any] = {
            "daemon": daemon.name,
            "image": image,
            "create": create,
            "storage": await self.storage_for(target, harp_route_host(daemon, record.name), port),
        }
        if record.source.detail.get("heartbeat") == "true":
            host = app_host(daemon)
            options["heartbeat"] = {"host": "127.0.0.1" if host == "0.0.0.0" else host, "port": port}
        return ProcessSpec(app=record.name, process=process, argv=[], options=options)

    async def start(self, spec: ProcessSpec, output: OutputSink) -> Handle:
        daemon, app = str(spec.options["daemon"]), spec.app
        client = await self._client(daemon)
        image = str(spec.options["image"])
        exists = await client.request("POST", "/docker/exapp/exists", exapp_name(app), docker=True)
        found = isinstance(exists, dict) and bool(exists.get("exists"))
        if found and exists.get("image_ref") not in (None, "", image):
            # a new image deployed: the old container goes (its data stays), as AppAPI replaces it
            body = {**exapp_name(app), "remove_data": False}
            await client.request("POST", "/docker/exapp/remove", body, docker=True)
            found = False
        if not found:
            await self._pull(client, image, None)
            # HaRP's create takes no command: the image's own runs, with the ExApp's environment
            await client.request(
                "POST", "/docker/exapp/create", spec.options["create"], docker=True, ok=(409,)
            )
        await client.request("POST", "/docker/exapp/start", exapp_name(app), docker=True)
        answer = await client.request(
            "POST", "/docker/exapp/wait_for_start", exapp_name(app), docker=True, timeout=WAIT_TIMEOUT_S
        )
        if not (isinstance(answer, dict) and answer.get("started")):
            status = answer.get("status") if isinstance(answer, dict) else None
            if status not in ("exited", "dead", "restarting"):  # exits are `watch`'s to report
                reason = answer.get("reason") if isinstance(answer, dict) else answer
                raise RunnerError(
                    f"ExApp {app} did not start on HaRP: {status or '?'} ({reason or 'no reason given'})"
                )
        heartbeat = spec.options.get("heartbeat")
        if heartbeat:
            host, port = str(heartbeat["host"]), int(heartbeat["port"])
            if not await trio.to_thread.run_sync(wait_heartbeat, host, port, 120.0, abandon_on_cancel=True):
                raise RunnerError(f"{app} gave no heartbeat at http://{host}:{port}/heartbeat")
        await self.register_storage(daemon, spec.options["storage"])
        return Handle(
            runner=self.name,
            ref=f"nc_app_{app}",
            started_at=time.time(),
            detail={"daemon": daemon, "app": app},
        )

    async def _pull(self, client: HarpClient, image: str, progress: Progress | None) -> None:
        """The image on the engine: kept when it is there, else pulled through HaRP's pass-through."""
        status, _ = await trio.to_thread.run_sync(
            lambda: client.call("GET", f"{client.docker_api}/images/{image}/json", docker=True, ok=(404,)),
            abandon_on_cancel=True,
        )
        if status != 404:
            return
        last = image.rsplit("/", 1)[-1]
        if "@" in last:  # by digest: fromImage takes it whole
            repository, tag = image, ""
        else:
            repository, tag = image.rsplit(":", 1) if ":" in last else (image, "latest")
        errors: list[str] = []

        def event(chunk: bytes) -> None:
            for line in chunk.splitlines():
                try:
                    item = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    continue
                if isinstance(item, dict):
                    if "error" in item:
                        errors.append(str(item["error"]))
                    elif progress is not None:
                        detail = item.get("progressDetail") or {}
                        progress(
                            f"pulling {item.get('status', '')}".strip(),
                            detail.get("current"),
                            detail.get("total"),
                        )

        params = {"fromImage": repository, **({"tag": tag} if tag else {})}
        await trio.to_thread.run_sync(
            lambda: client.stream("/images/create", params, event, PULL_TIMEOUT_S, method="POST"),
            abandon_on_cancel=True,
        )
        if errors:
            raise RunnerError(f"cannot pull {image} through HaRP: {errors[-1]}")

    async def look(self, handle: Handle) -> EngineRun | None:
        client = await self._client(handle.detail["daemon"])
        status, attrs = await trio.to_thread.run_sync(
            lambda: client.call(
                "GET", f"{client.docker_api}/containers/{handle.ref}/json", docker=True, ok=(404,)
            ),
            abandon_on_cancel=True,
        )
        return None if status == 404 or not isinstance(attrs, dict) else engine_run(attrs)

    async def wait(self, handle: Handle) -> ExitStatus:
        return await self.watch(handle, lambda run: None)

    async def watch(self, handle: Handle, seen: Callable[[EngineRun], None]) -> ExitStatus:
        try:
            return await watch_engine(self.look, handle, seen)
        finally:
            await self.forget(handle.detail["daemon"], handle.detail["app"])

    async def stop(self, handle: Handle, timeout: float, signum: int = 15) -> ExitStatus | None:
        daemon, app = handle.detail["daemon"], handle.detail["app"]
        await self.unregister_storage(daemon, app)
        client = await self._client(daemon)
        await client.request("POST", "/docker/exapp/stop", exapp_name(app), docker=True, ok=(404,))
        run = await self.look(handle)
        return run.last_exit if run is not None and run.last_exit is not None else ExitStatus(0)

    async def destroy(self, handle: Handle, keep_data: bool = False) -> None:
        await self._remove(handle.detail["daemon"], handle.detail["app"], keep_data)

    async def _remove(self, daemon: str, app: str, keep_data: bool) -> None:
        await self.unregister_storage(daemon, app)
        body = {**exapp_name(app), "remove_data": not keep_data}
        await (await self._client(daemon)).request("POST", "/docker/exapp/remove", body, docker=True)

    async def inspect(self, handle: Handle) -> dict[str, object]:
        client = await self._client(handle.detail["daemon"])
        status, attrs = await trio.to_thread.run_sync(
            lambda: client.call(
                "GET", f"{client.docker_api}/containers/{handle.ref}/json", docker=True, ok=(404,)
            ),
            abandon_on_cancel=True,
        )
        if status == 404 or not isinstance(attrs, dict):
            return {"container": handle.ref, "container_state": "gone"}
        state = attrs.get("State") or {}
        return {
            "container_id": str(attrs.get("Id", ""))[:12],
            "container_state": state.get("Status"),
            "health": (state.get("Health") or {}).get("Status"),
            "restarting": state.get("Restarting", False),
        }

    async def prepare(self, target: Target, progress: Progress | None) -> None:
        client = self.clients.of(daemon_of(target))
        await self._pull(client, target.app.source.detail["image"], progress)

    async def remove(self, target: Target, keep_data: bool) -> None:
        await self._remove(daemon_of(target).name, target.app.name, keep_data)

    async def logs(self, target: Target, tail: int) -> list[EngineLine]:
        client = self.clients.of(daemon_of(target))
        params = {"stdout": "1", "stderr": "1", "timestamps": "1", "tail": str(tail) if tail else "all"}
        status, raw = await trio.to_thread.run_sync(
            lambda: _raw(client, f"/containers/nc_app_{target.app.name}/logs", params), abandon_on_cancel=True
        )
        if status == 404:
            return []
        lines = []
        for stream, data in frames(raw):
            for line in data.decode("utf-8", "replace").splitlines():
                stamp, _, text = line.partition(" ")
                lines.append(EngineLine(stamp, stream, text))
        lines.sort(key=lambda line: (line.timestamp, line.stream))
        return lines[-tail:] if tail else []

    async def follow_logs(self, target: Target, send: Callable[[str, str], None]) -> None:
        client = self.clients.of(daemon_of(target))
        params = {"stdout": "1", "stderr": "1", "follow": "1", "since": str(int(time.time()))}
        pending = {"stdout": b"", "stderr": b""}
        buffer = bytearray()

        def chunk(data: bytes) -> None:
            buffer.extend(data)
            while len(buffer) >= 8:
                size = int.from_bytes(buffer[4:8], "big")
                if len(buffer) < 8 + size:
                    return
                stream = "stderr" if buffer[0] == 2 else "stdout"
                pending[stream] += bytes(buffer[8 : 8 + size])
                del buffer[: 8 + size]
                *lines, pending[stream] = pending[stream].split(b"\n")
                for line in lines:
                    send(stream, line.decode("utf-8", "replace"))

        await trio.to_thread.run_sync(
            lambda: client.stream(f"/containers/nc_app_{target.app.name}/logs", params, chunk, 24 * 3600.0),
            abandon_on_cancel=True,
        )

    async def _check_backend(self, client: HarpClient, version: str, info: dict[str, Any]) -> DaemonStatus:
        docker = await trio.to_thread.run_sync(client.engine_version, abandon_on_cancel=True)
        return DaemonStatus(True, docker, harp_version=version)

    async def check_image(self, daemon: DaemonRecord, image: str) -> None:
        """HaRP lets berthd inspect an image on the engine, not ask a registry: an image that is not on the
        engine is pulled when the app starts, and a pull that fails says so then."""
        return None


def _raw(client: HarpClient, path: str, params: dict[str, str]) -> tuple[int, bytes]:
    data = bytearray()
    try:
        client.stream(path, params, data.extend, 30.0)
    except CommandError as exc:
        if exc.code == "not_found":
            return 404, b""
        raise
    return 200, bytes(data)
