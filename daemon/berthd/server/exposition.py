"""The OpenMetrics page: berthd's counts (`berthd.server.metrics`) and, read at scrape time, the
supervised processes by state, through `prometheus_client` and a registry of berthd's own.

`prometheus_client` is imported on the first page, not when berthd starts: start-up time and idle
memory stay as they were for those who never scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from berthd.server.metrics import Histogram, Metrics
from berthd.supervision.manager import ProcessManager
from berthd.supervision.supervisor import State

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# Prometheus' older text format, for a scraper that does not ask for OpenMetrics (and for promtool,
# whose linter reads this format: it looks for a counter's HELP under its `_total` name)
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram_buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(bound, float(count)) for bound, count in histogram.cumulative()]


def families(metrics: Metrics, processes: ProcessManager) -> Iterator[Metric]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    commands = CounterMetricFamily(
        "berthd_commands", "Commands answered, by command and result (ok or the error code)",
        labels=["command", "result"],
    )  # fmt: skip
    for (command, result), count in sorted(metrics.commands.items()):
        commands.add_metric([command, result], count)
    yield commands
    latency = HistogramMetricFamily(
        "berthd_command_duration_seconds", "Time from a command's line to its answer", labels=["command"]
    )
    for command, histogram in sorted(metrics.latency.items()):
        latency.add_metric([command], _histogram_buckets(histogram), histogram.total)
    yield latency
    lock_wait = HistogramMetricFamily(
        "berthd_lock_wait_seconds", "Time a mutating command waited for the command lock"
    )
    lock_wait.add_metric([], _histogram_buckets(metrics.lock_wait), metrics.lock_wait.total)
    yield lock_wait
    yield GaugeMetricFamily("berthd_connections_open", "Connections open now", value=metrics.connections_open)
    states: Counter[str] = Counter()
    for app in sorted({app for app, _ in processes.processes}):
        states.update(str(row["state"]) for row in processes.report(app))
    by_state = GaugeMetricFamily("berthd_processes", "Supervised processes, by state", labels=["state"])
    for state in State:
        by_state.add_metric([str(state)], states[str(state)])
    yield by_state
    counters = {
        "berthd_connections_accepted": ("Connections accepted", metrics.connections_accepted),
        "berthd_connections_refused": ("Connections refused (too many clients)", metrics.connections_refused),
        "berthd_upload_received_bytes": ("Bytes of upload chunks stored", metrics.upload_bytes),
        "berthd_process_restarts": (
            "Restarts of supervised processes, by berthd or by their engine",
            processes.counts.restarts,
        ),
        "berthd_process_give_ups": (
            "Times a supervised process entered FAILED (its restart policy or supervision gave up)",
            processes.counts.give_ups,
        ),
        "berthd_log_written_bytes": (
            "Bytes written to the supervised processes' logs (prefixes included)",
            processes.log_counts.bytes_written,
        ),
        "berthd_log_written_lines": (
            "Lines written to the supervised processes' logs",
            processes.log_counts.lines_written,
        ),
    }
    for name, (documentation, value) in counters.items():
        yield CounterMetricFamily(name, documentation, value=value)


def render(metrics: Metrics, processes: ProcessManager, openmetrics: bool = True) -> str:
    """The page: OpenMetrics (`# EOF` last), or Prometheus' text format. Quick and with no await: read
    on the event loop, all of it at one instant."""
    from prometheus_client import exposition
    from prometheus_client.openmetrics import exposition as openmetrics_exposition
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)  # berthd's own: nothing of other code's leaks in
    registry.register(_Collector(metrics, processes))
    encoder = openmetrics_exposition if openmetrics else exposition
    return str(encoder.generate_latest(registry).decode())


class _Collector:
    """What the registry asks for at each page (a collector is anything with `collect`)."""

    def __init__(self, metrics: Metrics, processes: ProcessManager) -> None:
        self.metrics = metrics
        self.processes = processes

    def collect(self) -> Iterator[Metric]:
        return families(self.metrics, self.processes)
