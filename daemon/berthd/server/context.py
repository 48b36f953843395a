"""What a handler gets: the daemon's long-lived services and the request's own context."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, TypeVarTuple, Unpack

import trio

from berth.messages import Event
from berthd.access.audit import AuditLog
from berthd.access.rules import CallerView, RuleSet
from berthd.config import Config
from berthd.host.capabilities import CapabilityCache
from berthd.server.lock import CommandLock
from berthd.server.metrics import Metrics
from berthd.server.peercred import Peer
from berthd.store import Store
from berthd.supervision.manager import ProcessManager

DEPLOY_THREADS = 8
"""Worker threads for the slow parts of deploys (downloads, unpacking, fetches) of callers other than root:
a pool of their own, so that they never take the threads every app needs (starts, log reads)."""
DEPLOYS_PER_UID = 2
"""Slow deploy work one uid other than root has going at once; more waits for its turn."""

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass
class Services:
    config: Config
    store: Store
    data_dir: Path
    processes: ProcessManager
    capabilities: CapabilityCache
    audit: AuditLog | None = None  # None: --audit-log off
    lock: CommandLock = field(default_factory=CommandLock)
    started_at: float = field(default_factory=time.time)
    source_locks: dict[str, trio.Lock] = field(default_factory=dict)
    deploy_threads: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(DEPLOY_THREADS))
    deploy_shares: dict[int, trio.CapacityLimiter] = field(default_factory=dict)
    rules: RuleSet = field(default_factory=RuleSet)  # replaced whole when the config is reloaded
    metrics: Metrics = field(default_factory=Metrics)

    def app_dir(self, app: str) -> Path:
        return self.data_dir / "apps" / app

    async def deploy_work(
        self, uid: int, fn: Callable[[Unpack[Ts]], T], *args: *Ts, abandon_on_cancel: bool = False
    ) -> T:
        """`fn(*args)` on a worker thread, as slow deploy work of `uid`: one user's slow downloads cannot
        starve the rest of berthd, nor another user's deploys for long. root's run as any other work."""
        if uid == 0:
            return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel)
        share = self.deploy_shares.setdefault(uid, trio.CapacityLimiter(DEPLOYS_PER_UID))
        async with share:
            return await trio.to_thread.run_sync(
                fn, *args, limiter=self.deploy_threads, abandon_on_cancel=abandon_on_cancel
            )

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
    access: CallerView | None = None  # what the access rules let this caller see and use

    @property
    def caller(self) -> CallerView:
        if self.access is None:
            self.access = CallerView(self.services.rules, self.peer)
        return self.access

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
