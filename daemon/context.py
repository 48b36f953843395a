"""What a handler gets: the daemon's long-lived services and the request's own context."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config import Config
from daemon.lock import CommandLock
from daemon.peercred import Peer
from daemon.registry import Registry
from daemon.store import Store
from protocol.messages import Event


@dataclass
class Services:
    config: Config
    store: Store
    registry: Registry
    data_dir: Path
    lock: CommandLock = field(default_factory=CommandLock)
    started_at: float = field(default_factory=time.time)

    def app_dir(self, app: str) -> Path:
        return self.data_dir / "apps" / app


Emit = Callable[[Event], Awaitable[None]]


async def _discard(event: Event) -> None:
    return None


@dataclass
class Context:
    services: Services
    peer: Peer
    emit: Emit = _discard

    @property
    def store(self) -> Store:
        return self.services.store
