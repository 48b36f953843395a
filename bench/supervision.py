"""200 supervised processes (`/bin/sleep 1000`): berthd against supervisord (PyPI `supervisor`).

Both daemons run at once, each on its own UNIX socket with 200 processes of its own, for 3 cycles of
start and stop. Timed: start all 200 until every one is RUNNING (berthd: `ps:start`, then `ps:report`
polled; supervisord: `startAllProcesses`, then `getAllProcessInfo`), and stop all 200 (berthd:
`ps:stop`, which answers once all are stopped; supervisord: `stopAllProcesses`). On the last cycle,
with the 200 running: the status of all (berthd: `ps:report`; supervisord: `getAllProcessInfo`;
p50/p99, the calls alternating in blocks), and each daemon's RSS and USS, against those idle, and what
the unit shims berthd puts above each process weigh (their PSS, summed).

berthd scales a process type to at most 100 (`ps:scale`), so its 200 are two apps of 100;
supervisord's are one program with numprocs=200. supervisord starts its 200 first and stops them
first, so each daemon does one of the two with the other's 200 beside it and one without.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil

from bench.clients import OK_PREFIX, LineSocket, XmlRpcClient, request_ok
from bench.processes import BenchError, Program, ServerProcess, Session
from bench.report import (
    LATENCY_HEADERS,
    NO_GOAL,
    Comparison,
    latency_row,
    mib,
    ms,
    percentile,
    print_comparisons,
    print_table,
    print_title,
)
from bench.timing import interleaved
from berth.client import Client

PROCESSES = 200
PER_APP = 100  # berthd's most processes of one type (MAX_SCALE in daemon/commands/ps.py)
APPS = [f"sleepers-{index}" for index in range(1, PROCESSES // PER_APP + 1)]
SLEEP = ("/bin/sleep", "1000")
PROGRAM = Program("sleepers", " ".join(SLEEP), PROCESSES)
SETTLE = 0.5  # seconds before a memory reading, so start-up or start work has finished
CYCLES = 3  # of start and stop; the median is compared
STATUS_WARMUP = 10
STATUS_CALLS = 100
BLOCKS = 5
STATUS_TIME_LIMIT = 30.0
ALL_RUNNING_TIMEOUT = 60.0
POLL = 0.02
IO_TIMEOUT = 60.0  # a start or stop of 200 may take a while; not forever

REPORT = b"ps:report\n"
ALL_INFO = "supervisor.getAllProcessInfo"


@dataclass(frozen=True)
class Footprint:
    rss: int
    uss: int
    processes: int  # live descendants, zombies left out
    programs: int  # of those, the supervised SLEEPs (not berthd's unit shims)
    helpers_pss: int  # the proportional size of the others (berthd's shims), summed


def footprint(server: ServerProcess) -> Footprint:
    process = psutil.Process(server.pid)
    info = process.memory_full_info()
    live = programs = helpers_pss = 0
    for child in process.children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            live += 1
            if tuple(child.cmdline()) == SLEEP:
                programs += 1
            else:
                helpers_pss += child.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return Footprint(info.rss, info.uss, live, programs, helpers_pss)


def settled_footprint(server: ServerProcess) -> Footprint:
    time.sleep(SETTLE)
    return footprint(server)


# berthd


def berthd_states(conn: LineSocket) -> list[str]:
    answer = conn.request(REPORT)
    decoded = msgspec.json.decode(answer)
    if not decoded.get("ok"):
        raise BenchError(f"berthd answered ps:report with {answer[:300]!r}")
    return [str(row["state"]) for row in decoded["data"]]


def wait_all(states: Callable[[], list[str]], wanted: str, who: str) -> None:
    deadline = time.perf_counter() + ALL_RUNNING_TIMEOUT
    while (now := states()).count(wanted) < PROCESSES:
        if time.perf_counter() > deadline:
            counts = {state: now.count(state) for state in set(now)}
            raise BenchError(
                f"{who}: not all {PROCESSES} {wanted} within {ALL_RUNNING_TIMEOUT:.0f} s: {counts}"
            )
        time.sleep(POLL)


def create_berthd_apps(berthd: ServerProcess) -> None:
    with Client(berthd.socket, timeout=IO_TIMEOUT) as client:
        for app in APPS:
            for command in (
                ["apps:from-local", app, SLEEP[0], "--", *SLEEP[1:]],
                ["ps:scale", app, f"main={PER_APP}"],
            ):
                answer = client.call(command)
                if not answer.ok:
                    raise BenchError(f"berthd refused {' '.join(command)}: {answer.output}")


def start_berthd_processes(conn: LineSocket) -> float:
    started = time.perf_counter()
    for app in APPS:
        request_ok(conn, f"ps:start {app}")
    wait_all(lambda: berthd_states(conn), "RUNNING", "berthd")
    return time.perf_counter() - started


def stop_berthd_processes(conn: LineSocket) -> float:
    started = time.perf_counter()
    for app in APPS:
        request_ok(conn, f"ps:stop {app}")
    seconds = time.perf_counter() - started
    wait_all(lambda: berthd_states(conn), "STOPPED", "berthd")  # ps:stop answers once they are
    return seconds


# supervisord


def supervisord_states(rpc: XmlRpcClient) -> list[str]:
    infos: list[dict[str, Any]] = rpc.call(ALL_INFO)
    return [str(info["statename"]) for info in infos]


def check_all_succeeded(results: list[dict[str, Any]], method: str) -> None:
    failed = [result for result in results if result.get("status") != 80]  # SUCCESS in supervisor.xmlrpc
    if len(results) != PROCESSES or failed:
        raise BenchError(f"supervisord {method}: {len(results)} results, failures: {failed[:3]}")


def start_supervisord_processes(rpc: XmlRpcClient) -> float:
    started = time.perf_counter()
    check_all_succeeded(rpc.call("supervisor.startAllProcesses", True), "startAllProcesses")
    wait_all(lambda: supervisord_states(rpc), "RUNNING", "supervisord")
    return time.perf_counter() - started


def stop_supervisord_processes(rpc: XmlRpcClient) -> float:
    started = time.perf_counter()
    check_all_succeeded(rpc.call("supervisor.stopAllProcesses", True), "stopAllProcesses")
    seconds = time.perf_counter() - started
    wait_all(lambda: supervisord_states(rpc), "STOPPED", "supervisord")
    return seconds


# both


@dataclass
class Figures:
    idle: Footprint
    loaded: Footprint | None = None
    starts: list[float] = field(default_factory=list)  # seconds, one a cycle
    stops: list[float] = field(default_factory=list)
    status: list[float] = field(default_factory=list)  # seconds, sorted

    @property
    def start(self) -> float:
        return statistics.median(self.starts)

    @property
    def stop(self) -> float:
        return statistics.median(self.stops)

    @property
    def with_all(self) -> Footprint:
        assert self.loaded is not None, "measured on the last cycle"
        return self.loaded

    def spread(self, seconds: list[float]) -> str:
        return f"{statistics.median(seconds):.3f} ({min(seconds):.2f}-{max(seconds):.2f})"


def status_latency(conn: LineSocket, rpc: XmlRpcClient) -> tuple[list[float], list[float]]:
    def berthd_report() -> None:
        if not conn.request(REPORT).startswith(OK_PREFIX):
            raise BenchError("berthd's ps:report failed")

    def supervisord_info() -> None:
        rpc.request(ALL_INFO)

    for _ in range(STATUS_WARMUP):
        berthd_report()
        supervisord_info()
    berthd, supervisord = interleaved(
        [berthd_report, supervisord_info], STATUS_CALLS, BLOCKS, STATUS_TIME_LIMIT
    )
    return berthd, supervisord


def measure(session: Session, profile_to: Path | None) -> tuple[Figures, Figures]:
    """`CYCLES` of start and stop; memory and status latency on the last, after the churn of the others."""
    berthd = session.start_berthd(profile_to=profile_to)
    supervisord = session.start_supervisord(PROGRAM)
    try:
        berthd.wait_ready()
        supervisord.wait_ready()
        create_berthd_apps(berthd)
        ours, theirs = Figures(settled_footprint(berthd)), Figures(footprint(supervisord))
        with (
            LineSocket(berthd.socket, timeout=IO_TIMEOUT) as conn,
            XmlRpcClient(supervisord.socket, IO_TIMEOUT) as rpc,
        ):
            for cycle in range(CYCLES):
                # each daemon does one of start and stop beside the other's 200, and one alone
                theirs.starts.append(start_supervisord_processes(rpc))
                ours.starts.append(start_berthd_processes(conn))
                if cycle == CYCLES - 1:
                    ours.loaded, theirs.loaded = settled_footprint(berthd), footprint(supervisord)
                    for figures in (ours.loaded, theirs.loaded):
                        if figures.programs != PROCESSES:
                            raise BenchError(f"{figures.programs} processes running, not {PROCESSES}")
                    ours.status, theirs.status = status_latency(conn, rpc)
                theirs.stops.append(stop_supervisord_processes(rpc))
                ours.stops.append(stop_berthd_processes(conn))
        left = footprint(berthd).processes, footprint(supervisord).processes
        if any(left):
            raise BenchError(f"processes left after the stops: berthd {left[0]}, supervisord {left[1]}")
    finally:
        session.stop(supervisord)
        session.stop(berthd)
    return ours, theirs


def winner(berthd: float, supervisord: float) -> str:
    if berthd <= supervisord:
        return f"berthd, {supervisord / berthd:.1f}x"
    return f"supervisord, {berthd / supervisord:.1f}x"


def print_figures(berthd: Figures, supervisord: Figures) -> None:
    rows = [
        [f"start {PROCESSES} (s)", berthd.spread(berthd.starts), supervisord.spread(supervisord.starts),
         winner(berthd.start, supervisord.start)],
        *[[f"status of {PROCESSES}, p{q} (ms)", ms(percentile(berthd.status, q)),
           ms(percentile(supervisord.status, q)),
           winner(percentile(berthd.status, q), percentile(supervisord.status, q))] for q in (50, 99)],
        [f"stop {PROCESSES} (s)", berthd.spread(berthd.stops), supervisord.spread(supervisord.stops),
         winner(berthd.stop, supervisord.stop)],
        [f"RSS with {PROCESSES} (MiB)", mib(berthd.with_all.rss), mib(supervisord.with_all.rss),
         winner(berthd.with_all.rss, supervisord.with_all.rss)],
    ]  # fmt: skip
    print_table(["operation", "berthd", "supervisord", "who wins, by"], rows)
    print_table(
        LATENCY_HEADERS,
        [
            latency_row("berthd ps:report", berthd.status, STATUS_CALLS),
            latency_row("supervisord getAllProcessInfo", supervisord.status, STATUS_CALLS),
        ],
    )
    print_table(
        ["daemon", "RSS idle", f"RSS with {PROCESSES}", "KiB a process", "USS idle", f"USS with {PROCESSES}",
         "shims' PSS, KiB a process"],
        [
            [name, mib(figures.idle.rss), mib(figures.with_all.rss),
             f"{(figures.with_all.rss - figures.idle.rss) / PROCESSES / 1024:.0f}",
             mib(figures.idle.uss), mib(figures.with_all.uss),
             f"{figures.with_all.helpers_pss / PROCESSES / 1024:.0f}"]
            for name, figures in (("berthd", berthd), ("supervisord", supervisord))
        ],
    )  # fmt: skip


def run(session: Session, profile_to: Path | None = None) -> None:
    print_title(
        f"{PROCESSES} supervised processes ({' '.join(SLEEP)}): berthd vs supervisord",
        f"berthd: {len(APPS)} apps of {PER_APP} (ps:scale's limit); supervisord: numprocs={PROCESSES}, "
        "startsecs=0, through XML-RPC on its UNIX socket.",
        f"start: until all are RUNNING; stop: until the call answers (all stopped); {CYCLES} cycles, "
        "median (min-max).",
        f"status: the whole table, undecoded, {STATUS_CALLS} calls each after {STATUS_WARMUP} warm-up; "
        "memory and status with the last cycle's 200.",
    )
    berthd, supervisord = measure(session, profile_to)
    print_figures(berthd, supervisord)
    report_ms = {q: percentile(berthd.status, q) * 1000 for q in (50, 99)}
    print_comparisons(
        [
            Comparison(f"berthd RSS with {PROCESSES} / idle", berthd.with_all.rss / berthd.idle.rss, NO_GOAL),
            Comparison(f"berthd ps:report p50 at {PROCESSES}", report_ms[50], NO_GOAL, unit="ms"),
            Comparison(f"berthd ps:report p99 at {PROCESSES}", report_ms[99], NO_GOAL, unit="ms"),
            Comparison(
                f"berthd / supervisord RSS with {PROCESSES}",
                berthd.with_all.rss / supervisord.with_all.rss,
                NO_GOAL,
            ),
            Comparison("berthd / supervisord start", berthd.start / supervisord.start, NO_GOAL),
            Comparison(
                "berthd / supervisord status p50",
                percentile(berthd.status, 50) / percentile(supervisord.status, 50),
                NO_GOAL,
            ),
            Comparison("berthd / supervisord stop", berthd.stop / supervisord.stop, NO_GOAL),
        ]
    )
