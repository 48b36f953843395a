"""What the HaRP runners share: a client per daemon, HaRP's `exapp_storage`, and `/info`.

HaRP names an ExApp by `name` (the app) and `instance_id` (berthd gives none, so the container is
`nc_app_APP`, as the Docker runner names it). An ExApp that runs is registered in HaRP's `exapp_storage`
(its token, version, host, port and routes) and removed from it when it stops or goes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from berthd.deploy.exapp import free_port, image_version
from berthd.errors import CommandError, not_found
from berthd.runners import DaemonStatus, Runner, RunnerError, RunnerHost, Target
from berthd.runners.clients import ClientCache
from berthd.runners.harp.client import HarpClient
from berthd.store.records import DaemonRecord

MIN_HARP_VERSION = (0, 3, 0)  # AppAPI's HarpVersionCheck
USER_ACCESS = 1  # HaRP's AccessLevel: PUBLIC 0, USER 1, ADMIN 2
DEFAULT_ROUTES = [{"url": ".*", "access_level": USER_ACCESS, "bruteforce_protection": []}]
"""AppAPI takes an ExApp's routes from its info.xml; an image has none, so every path is for users."""


def daemon_of(target: Target) -> DaemonRecord:
    if target.daemon is None:
        raise RunnerError(f"{target.app.name} has no deploy daemon")
    return target.daemon


def exapp_name(app: str) -> dict[str, str]:
    """How HaRP names an ExApp in every request."""
    return {"name": app, "instance_id": ""}


def parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class HarpBase(Runner):
    """What every HaRP runner shares: its clients, `exapp_storage`, `/info`."""

    def __init__(self, host: RunnerHost) -> None:
        super().__init__(host)
        self.clients: ClientCache[HarpClient] = ClientCache(HarpClient, HarpClient.close)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.clients.keep(task_status=task_status)

    async def _daemon(self, name: str) -> DaemonRecord:
        record = await self.host.store.get_daemon(name)
        if record is None:
            raise not_found(f"no deploy daemon {name!r}")
        return record

    async def _client(self, daemon: str) -> HarpClient:
        return self.clients.of(await self._daemon(daemon))

    async def register_storage(self, daemon: str, storage: dict[str, Any]) -> None:
        app = str(storage["app"])
        body = {key: value for key, value in storage.items() if key != "app"}
        await (await self._client(daemon)).request("POST", f"/exapp_storage/{app}", body)

    async def unregister_storage(self, daemon: str, app: str) -> None:
        """Out of HaRP's `exapp_storage`; one HaRP never had (restarted since) is already out."""
        client = await self._client(daemon)
        await client.request("DELETE", f"/exapp_storage/{app}", ok=(404,))

    async def forget(self, daemon: str, app: str) -> None:
        """It stopped or went: HaRP routes nothing to it any more (a HaRP away forgets it when it
        restarts; its storage is in memory)."""
        with trio.CancelScope(shield=True), contextlib.suppress(CommandError):
            await self.unregister_storage(daemon, app)

    async def storage_for(self, target: Target, host: str, port: int) -> dict[str, Any]:
        secret, _ = await self.host.store.exapp_identity(target.app.name, lambda taken: free_port(taken))
        return {
            "app": target.app.name,
            "exapp_token": secret,
            "exapp_version": image_version(target.app.source.detail.get("image", "")),
            "host": host,
            "port": port,
            "routes": DEFAULT_ROUTES,
        }

    async def check(self, daemon: DaemonRecord) -> DaemonStatus:
        client = self.clients.of(daemon)
        try:
            info = await client.request("GET", "/info")
            if not isinstance(info, dict) or "version" not in info:
                return DaemonStatus(False, why="HaRP's /info has no version (is this HaRP?)")
            version = str(info["version"])
            if parse_version(version) < MIN_HARP_VERSION:
                return DaemonStatus(
                    False, harp_version=version, why=f"HaRP {version} is too old: 0.3.0 or later"
                )
            return await self._check_backend(client, version, info)
        except CommandError as exc:
            return DaemonStatus(
                False, why=exc.message.removeprefix(f"deploy daemon {daemon.name} is unavailable: ")
            )

    async def _check_backend(self, client: HarpClient, version: str, info: dict[str, Any]) -> DaemonStatus:
        return DaemonStatus(True, harp_version=version)
