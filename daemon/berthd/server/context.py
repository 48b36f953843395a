"""What a handler gets: the daemon's long-lived services and the request's own context."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from berth.messages import Event
from berthd.config import Config
from berthd.host.capabilities import CapabilityCache
from berthd.server.lock import CommandLock
from berthd.server.peercred import Peer
from berthd.store import Store
from berthd.supervision.manager import ProcessManager


@dataclass
class Services:
    config: Config
    store: Store
    data_dir: Path
    processes: ProcessManager
    capabilities: CapabilityCache
    lock: CommandLock = field(default_factory=CommandLock)
    started_at: float = field(default_factory=time.time)
    source_locks: dict[str, trio.Lock] = field(default_factory=dict)

    def app_dir(self, app: str) -> Path:
        return self.data_dir / "apps" / app

    def source_lock(self, app: str) -> trio.Lock:
        """One deploy at a time per app (a deploy may run long without the global lock)."""
        return self.source_locks.setdefault(app, trio.Lock())


Emit = Callable[[Event], Awaitable[None]]


async def _discard(event: Event) -> None:
    return None


@dataclass
class Context:
    services: Services
    peer: Peer
    emit: Emit = _discard
    unlock: Callable[[], None] | None = None  # set while a state-changing command holds the lock
    client_gone: Callable[[], bool] = lambda: False  # noqa: E731 - has the client closed the connection?

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def processes(self) -> ProcessManager:
        return self.services.processes

    def release_lock(self) -> None:
        """The state change is recorded; what follows waits on the outside world, not on the lock."""
        if self.unlock is not None:
            self.unlock()
            self.unlock = None
