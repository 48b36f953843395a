"""Resident memory: berthd and the bare trio echo server, idle after start, and after the load benchmarks.

RSS counts shared pages (the interpreter, libraries) too; USS is what the process alone holds, what
stopping it would give back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from bench.processes import ServerProcess, Session
from bench.report import NO_GOAL, Comparison, mib, print_comparisons, print_table, print_title

SETTLE = 0.5  # seconds after the first accepted connection, so start-up work has finished


@dataclass(frozen=True)
class Footprint:
    what: str
    rss: int
    uss: int

    def row(self) -> list[str]:
        return [self.what, mib(self.rss), mib(self.uss)]


def footprint(what: str, server: ServerProcess) -> Footprint:
    info = psutil.Process(server.pid).memory_full_info()
    return Footprint(what, info.rss, info.uss)


def idle_after_start(session: Session, what: str, server: ServerProcess) -> Footprint:
    try:
        server.wait_ready()
        time.sleep(SETTLE)
        return footprint(what, server)
    finally:
        session.stop(server)


def run(session: Session, loaded: tuple[ServerProcess, ServerProcess] | None = None) -> None:
    """`loaded`: the berthd and echo server the latency and throughput benchmarks used, if they ran."""
    print_title("memory (MiB)", f"idle: {SETTLE} s after the first accepted connection.")
    echo = idle_after_start(session, "bare trio echo, idle", session.start_echo())
    berthd = idle_after_start(session, "berthd, idle", session.start_berthd())
    rows = [echo, berthd]
    if loaded is not None:
        loaded_berthd, loaded_echo = loaded
        rows += [
            footprint("bare trio echo, after the load benchmarks", loaded_echo),
            footprint("berthd, after the load benchmarks", loaded_berthd),
        ]
    print_table(["process", "RSS", "USS"], [entry.row() for entry in rows])
    print_comparisons(
        [
            Comparison("berthd / echo RSS, idle", berthd.rss / echo.rss, NO_GOAL),
            Comparison("berthd / echo USS, idle", berthd.uss / echo.uss, NO_GOAL),
        ]
    )
