"""`ping` round-trip latency from one client sending one request at a time.

Against (a) the bare trio echo server on the same kind of persistent connection: what berthd adds to
trio's floor (goal: within 2x); and (b) the dokku-daemon design, socat forking a bash handler per
connection, so one connection per command: the goal is berthd 20x faster. berthd is also timed with a
new connection per command, the same pattern as (b), for reference.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.clients import PING, LineSocket, check_pong
from bench.processes import ServerProcess, Session
from bench.report import Comparison, Goal, ms, percentile, print_comparisons, print_table, print_title
from bench.timing import interleaved

WARMUP = 500
PINGS = 5_000
PER_CONNECTION_WARMUP = 20
PER_CONNECTION_PINGS = 300
BLOCKS = 10
SERIES_TIME_LIMIT = 20.0  # a slow machine gets fewer samples, not a longer run

WITHIN_2X = Goal("berthd within 2x", lambda ratio: ratio <= 2.0)
TWENTY_TIMES_FASTER = Goal("berthd 20x faster", lambda ratio: ratio >= 20.0)
REFERENCE = Goal("(same pattern as socat; reference)")


@dataclass(frozen=True)
class Series:
    server: str
    connection: str
    requested: int
    samples: list[float]  # seconds, sorted

    def p(self, q: float) -> float:
        return percentile(self.samples, q)

    def row(self) -> list[str]:
        mean = sum(self.samples) / len(self.samples)
        return [self.server, self.connection, f"{len(self.samples)}/{self.requested}",
                ms(self.p(50)), ms(self.p(90)), ms(self.p(99)), ms(self.samples[-1]), ms(mean)]  # fmt: skip


def persistent(servers: Sequence[ServerProcess]) -> list[Series]:
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(LineSocket(server.socket)) for server in servers]
        pingers = [
            functools.partial(ping, conn, server.label) for conn, server in zip(conns, servers, strict=True)
        ]
        for pinger in pingers:
            for _ in range(WARMUP):
                pinger()
        samples = interleaved(pingers, PINGS, BLOCKS, SERIES_TIME_LIMIT)
    return [Series(s.label, "persistent", PINGS, t) for s, t in zip(servers, samples, strict=True)]


def per_command(servers: Sequence[ServerProcess]) -> list[Series]:
    pingers = [functools.partial(ping_on_new_connection, server.socket, server.label) for server in servers]
    for pinger in pingers:
        for _ in range(PER_CONNECTION_WARMUP):
            pinger()
    samples = interleaved(pingers, PER_CONNECTION_PINGS, BLOCKS, SERIES_TIME_LIMIT)
    return [
        Series(s.label, "new per command", PER_CONNECTION_PINGS, t)
        for s, t in zip(servers, samples, strict=True)
    ]


def ping(conn: LineSocket, label: str) -> None:
    check_pong(conn.request(PING), label)


def ping_on_new_connection(path: Path, label: str) -> None:
    with LineSocket(path) as conn:
        check_pong(conn.request(PING), label)


def run(session: Session, berthd: ServerProcess, echo: ServerProcess) -> None:
    print_title(
        "ping round-trip latency (one client, sequential requests; ms)",
        f"persistent: {WARMUP} warm-up pings, then {PINGS} timed on one connection;",
        f"new per command: connect, ping, read the answer, close ({PER_CONNECTION_PINGS} timed).",
        f"The servers compared are timed in {BLOCKS} alternating blocks.",
    )
    socat = session.start_socat()
    try:
        socat.wait_ready()
        echo_series, berthd_series = persistent([echo, berthd])
        socat_series, berthd_per_command = per_command([socat, berthd])
    finally:
        session.stop(socat)
    all_series = [echo_series, berthd_series, socat_series, berthd_per_command]
    print_table(
        ["server", "connection", "n", "p50", "p90", "p99", "max", "mean"],
        [series.row() for series in all_series],
    )
    print_comparisons(
        [
            Comparison("berthd p50 / echo p50", berthd_series.p(50) / echo_series.p(50), WITHIN_2X),
            Comparison("berthd p99 / echo p99", berthd_series.p(99) / echo_series.p(99), WITHIN_2X),
            Comparison(
                "socat p50 / berthd p50", socat_series.p(50) / berthd_series.p(50), TWENTY_TIMES_FASTER
            ),
            Comparison(
                "socat p99 / berthd p99", socat_series.p(99) / berthd_series.p(99), TWENTY_TIMES_FASTER
            ),
            Comparison(
                "socat p50 / berthd new-connection p50",
                socat_series.p(50) / berthd_per_command.p(50),
                REFERENCE,
            ),
        ]
    )
