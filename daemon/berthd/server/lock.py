"""The one lock that state-changing commands take, in arrival order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio


class CommandLock:
    """A FIFO lock (trio's Lock hands over in arrival order) that can say how many are ahead."""

    def __init__(self) -> None:
        self._lock = trio.Lock()
        self._waiting = 0

    async def acquire(self, on_queued: Callable[[int], Awaitable[None]] | None = None) -> None:
        if self._lock.locked() and on_queued is not None:
            await on_queued(self._waiting + 1)
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1

    def release(self) -> None:
        self._lock.release()

    @asynccontextmanager
    async def held(self, on_queued: Callable[[int], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        await self.acquire(on_queued)
        try:
            yield
        finally:
            self.release()
