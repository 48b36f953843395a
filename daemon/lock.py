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

    @property
    def waiting(self) -> int:
        return self._waiting

    @asynccontextmanager
    async def held(self, on_queued: Callable[[int], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        if self._lock.locked() and on_queued is not None:
            await on_queued(self._waiting + 1)
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()
