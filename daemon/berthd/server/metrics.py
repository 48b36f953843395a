"""What berthd counts as it serves: commands, their latency, the lock's wait, connections.

Counting is plain integers and floats in dicts (a ping pays a few dict updates, no lock, no import):
the client library (`prometheus_client`) is loaded only when a page is asked for, by
`berthd.server.exposition`, which turns these counts into OpenMetrics families at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# seconds; a ping takes ~0.1 ms, a deploy minutes
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
LATENCY_BUCKETS += (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LOCK_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative: the exposition adds them up), a sum and a count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or under it), +Inf last, as the exposition wants them."""
        running, rows = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            rows.append((bound, running))
        return rows


@dataclass(slots=True)
class Metrics:
    """berthd's own counts, one object for the whole server (in `Services`)."""

    commands: dict[tuple[str, str], int] = field(default_factory=dict)  # (command, result) -> served
    latency: dict[str, Histogram] = field(default_factory=dict)  # command -> seconds to answer
    lock_wait: Histogram = field(default_factory=lambda: Histogram(LOCK_WAIT_BUCKETS))
    connections_open: int = 0
    connections_accepted: int = 0
    connections_refused: int = 0
    upload_bytes: int = 0  # of the chunks stored (decoded: what reached the disk)

    def served(self, command: str, result: str, seconds: float, lock_waited: float | None) -> None:
        """One command answered: `result` is "ok" or its error code; `lock_waited`: None for a command
        that took no lock."""
        key = (command, result)
        self.commands[key] = self.commands.get(key, 0) + 1
        latency = self.latency.get(command)
        if latency is None:
            latency = self.latency[command] = Histogram(LATENCY_BUCKETS)
        latency.observe(seconds)
        if lock_waited is not None:
            self.lock_wait.observe(lock_waited)

    def accepted(self) -> None:
        self.connections_accepted += 1
        self.connections_open += 1

    def closed(self) -> None:
        self.connections_open -= 1

    def refused(self) -> None:
        self.connections_refused += 1
