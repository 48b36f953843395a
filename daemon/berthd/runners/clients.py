"""One client per deploy daemon config, kept while the config is the same: what a runner that talks to
a daemon over the network keeps (a new client costs connections, and for Docker a version round trip)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
import trio

from berthd.store.records import DaemonRecord

C = TypeVar("C")


class ClientCache(Generic[C]):
    """`of(daemon)` on any thread: the daemon's client, made by `make` (which may block; never under the
    lock) when there is none or the daemon's config changed, and the old one closed."""

    def __init__(self, make: Callable[[DaemonRecord], C], close: Callable[[C], None]) -> None:
        self._make = make
        self._close = close
        self._clients: dict[str, tuple[bytes, C]] = {}
        self._lock = threading.Lock()

    def of(self, daemon: DaemonRecord) -> C:
        fingerprint = msgspec.json.encode(daemon)
        with self._lock:
            cached = self._clients.get(daemon.name)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
        client = self._make(daemon)
        with self._lock:
            old = self._clients.get(daemon.name)
            self._clients[daemon.name] = (fingerprint, client)
        if old is not None and old[1] is not client:
            self._close(old[1])
        return client

    def close_all(self) -> None:
        with self._lock:
            clients, self._clients = [client for _, client in self._clients.values()], {}
        for client in clients:
            with contextlib.suppress(Exception):
                self._close(client)

    async def keep(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A runner's `serve`: the clients live until it is cancelled, then all are closed."""
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.close_all()
