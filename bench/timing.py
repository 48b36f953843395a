"""Timed series: calls of several servers alternated in blocks, so a change in the machine's load falls
on every server alike, and cut short by a time limit rather than running long on a slow machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def interleaved(
    calls: Sequence[Callable[[], object]],
    count: int,
    blocks: int,
    time_limit: float,
    after_block: Callable[[], object] | None = None,
) -> list[list[float]]:
    """Up to `count` timed calls of each, alternating in `blocks` blocks; seconds, each list sorted.
    `after_block`, untimed, after each block (to end what the calls started)."""
    samples: list[list[float]] = [[] for _ in calls]
    block = max(1, count // blocks)
    deadline = time.perf_counter() + time_limit
    while min(map(len, samples)) < count and time.perf_counter() < deadline:
        for call, timings in zip(calls, samples, strict=True):
            for _ in range(min(block, count - len(timings))):
                started = time.perf_counter()
                call()
                timings.append(time.perf_counter() - started)
            if after_block is not None:
                after_block()
    for timings in samples:
        timings.sort()
    return samples
