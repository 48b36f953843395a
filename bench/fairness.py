"""Fairness: one uid floods berthd with commands while another measures its `ping` round trips.

The flooder (uid `FLOODER`) pipelines `ping` on `FLOOD_CONNECTIONS` connections as fast as its sockets
take them; the measurer (uid `MEASURER`) sends one `ping` at a time, paced under its own bound.
Both are forked children of the benchmark that changed their uid, so it must run as root. The
measurer's p50 and p99 with nobody else connected (idle) and under the flood are timed in alternating
rounds, so a change in the machine's load falls on both alike. The goal (issue 15): p99 under the flood
within 2x of idle, with berthd's default bound per uid. The same run against a berthd whose bound is out
of reach shows what the bound is worth.

Idle here means that berthd sleeps between two of the measurer's pings and must be woken for each; under
the flood it is awake already, so the flooded figures may come out below the idle ones.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.callers import OUT_OF_REACH_BOUND, Children, Control, can_switch_uid, open_to_every_uid
from bench.clients import PING, LineSocket, check_pong
from bench.processes import ServerProcess, Session
from bench.report import (
    Comparison,
    Goal,
    latency_row,
    percentile,
    print_comparisons,
    print_table,
    print_title,
)

FLOODER, MEASURER = 4101, 4102
FLOOD_CONNECTIONS = 16
FLOOD_LINE = b"ping\n"  # the cheapest command: the most answers a second, the hardest on the event loop
FLOOD_WRITE = FLOOD_LINE * 1024  # what the flooder sends each time a socket will take more
FLOOD_TIME_LIMIT = 120.0  # a flooder that is never told to stop stops by itself,
FLOOD_MAX_WRITES = 1_000_000  # as does one that has written this many times
FLOOD_WARMUP = 1.0  # seconds of flood before the measurer starts: past the flooder's burst
SETTLE = 0.5  # seconds after a flood before the next idle round
ROUNDS = 3
PINGS_PER_ROUND = 250
PINGS_PER_SECOND = 80  # the measurer's pace: under the default bound of 100 a second
WARMUP_PINGS = 20

WITHIN_2X = Goal("within 2x", lambda ratio: ratio <= 2.0)
REFERENCE = Goal("(no bound; reference)")


@dataclass
class FloodCount:
    """What the flooder's lines were answered: run (`ok`), refused (`busy`), anything else."""

    seconds: float = 0.0
    ok: int = 0
    busy: int = 0
    other: int = 0

    def add(self, other: FloodCount) -> None:
        self.seconds += other.seconds
        self.ok, self.busy, self.other = self.ok + other.ok, self.busy + other.busy, self.other + other.other


def flood(path: Path, control: Control) -> FloodCount:
    """Pipeline `FLOOD_LINE` on every connection until told to stop; count the answers by kind."""
    selector = selectors.DefaultSelector()
    conns = []
    for _ in range(FLOOD_CONNECTIONS):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        conns.append(sock)
    selector.register(control, selectors.EVENT_READ)
    count, started = FloodCount(), time.perf_counter()
    deadline = started + FLOOD_TIME_LIMIT
    writes = 0
    while not control.stopped() and time.perf_counter() < deadline and writes < FLOOD_MAX_WRITES:
        for key, events in selector.select(timeout=0.1):
            if not isinstance(key.fileobj, socket.socket):
                continue  # the control pipe: the loop's test reads it
            sock = key.fileobj
            if events & selectors.EVENT_WRITE:
                with contextlib.suppress(BlockingIOError):
                    sock.send(FLOOD_WRITE)
                    writes += 1
            if events & selectors.EVENT_READ:
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("berthd closed a connection of the flooder")
                answers, ok, busy = (
                    data.count(b"\n"),
                    data.count(b'{"ok":true'),
                    data.count(b'"error":"busy"'),
                )
                count.ok, count.busy, count.other = (
                    count.ok + ok,
                    count.busy + busy,
                    count.other + answers - ok - busy,
                )
    count.seconds = time.perf_counter() - started
    for sock in conns:
        sock.close()
    return count


def pings(path: Path, control: Control) -> list[float]:
    """`PINGS_PER_ROUND` round trips, one at a time, at `PINGS_PER_SECOND`; seconds, sorted."""
    samples = []
    with LineSocket(path) as conn:
        for _ in range(WARMUP_PINGS):
            check_pong(conn.request(PING), "berthd")
        due = time.perf_counter()
        for _ in range(PINGS_PER_ROUND):
            due += 1 / PINGS_PER_SECOND
            time.sleep(max(0.0, due - time.perf_counter()))
            sent = time.perf_counter()
            answer = conn.request(PING)
            samples.append(time.perf_counter() - sent)
            check_pong(answer, "berthd")
    return sorted(samples)


@dataclass
class Measured:
    label: str
    idle: list[float] = field(default_factory=list)
    flooded: list[float] = field(default_factory=list)
    flood: FloodCount = field(default_factory=FloodCount)

    def ratio(self, q: float) -> float:
        return percentile(self.flooded, q) / percentile(self.idle, q)


def measure(berthd: ServerProcess, label: str) -> Measured:
    measured = Measured(label)
    with Children() as children:
        for _ in range(ROUNDS):
            measured.idle += children.start(MEASURER, lambda control: pings(berthd.socket, control)).result()
            flooder = children.start(FLOODER, lambda control: flood(berthd.socket, control))
            time.sleep(FLOOD_WARMUP)
            measured.flooded += children.start(
                MEASURER, lambda control: pings(berthd.socket, control)
            ).result()
            flooder.stop()
            measured.flood.add(flooder.result())
            time.sleep(SETTLE)
    measured.idle.sort()
    measured.flooded.sort()
    return measured


def run(session: Session) -> None:
    print_title(
        "fairness: one uid floods commands while another pings (ms)",
        f"uid {FLOODER} pipelines `ping` on {FLOOD_CONNECTIONS} connections as fast as they take it;",
        f"uid {MEASURER} pings one at a time, {PINGS_PER_SECOND} a second, {PINGS_PER_ROUND} a round,",
        f"{ROUNDS} rounds idle and {ROUNDS} under the flood, alternating; both uids are forked children.",
    )
    if not can_switch_uid():
        print("   skipped: the callers change their uid, which needs root")
        return
    open_to_every_uid(session)
    results = []
    for label, options in (("default bound", []), ("bound out of reach", OUT_OF_REACH_BOUND)):
        berthd = session.start_berthd(options=["--socket-mode", "0666", *options])
        try:
            berthd.wait_ready()
            results.append(measure(berthd, label))
        finally:
            session.stop(berthd)
    rows = []
    for measured in results:
        rows.append(latency_row(f"{measured.label}, idle", measured.idle, ROUNDS * PINGS_PER_ROUND))
        rows.append(latency_row(f"{measured.label}, under flood", measured.flooded, ROUNDS * PINGS_PER_ROUND))
    print_table(["measurer's ping", "n", "p50", "p90", "p99", "max", "mean"], rows)
    print_table(
        ["flooder's answers a second", "run", "busy", "other"],
        [
            [m.label, *(f"{n / m.flood.seconds:,.0f}" for n in (m.flood.ok, m.flood.busy, m.flood.other))]
            for m in results
        ],
    )
    bounded, unbounded = results
    print_comparisons(
        [
            Comparison("p50 under flood / idle, default bound", bounded.ratio(50), WITHIN_2X),
            Comparison("p99 under flood / idle, default bound", bounded.ratio(99), WITHIN_2X),
            Comparison("p50 under flood / idle, bound out of reach", unbounded.ratio(50), REFERENCE),
            Comparison("p99 under flood / idle, bound out of reach", unbounded.ratio(99), REFERENCE),
        ]
    )
