"""Throughput with 64 clients at once, each on its own connection, each waiting for an answer before
its next request: `ping` (the server's own cost), then `apps:create`/`apps:destroy --force` pairs
(state changes: the command lock and a SQLite commit each). The bare trio echo server, given the same
lines, is the baseline. Then the cost of the audit log: `ping` on that berthd (audit log on, the
default) and on one started with `--audit-log off`, in turns, the best series of each.

The clients are trio tasks in the benchmark's process; the servers are their own processes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import trio

from bench.clients import OK_PREFIX, PING, LineStream
from bench.processes import ServerProcess
from bench.report import NO_GOAL, Comparison, ms, percentile, print_comparisons, print_table, print_title

CLIENTS = 64
PINGS_PER_CLIENT = 200
APP_PAIRS_PER_CLIENT = 10  # 20 commands a client, 1,280 in all: each waits for the one lock
SERIES_TIME_LIMIT = 30.0  # past it the clients stop and the figures cover what was done
# ping series on each of the two berthds, in turns: the machine's noise is larger than the cost
AUDIT_ROUNDS = 5


def ping_script(client: int) -> list[bytes]:
    return [PING] * PINGS_PER_CLIENT


def apps_script(client: int) -> list[bytes]:
    lines = []
    for pair in range(APP_PAIRS_PER_CLIENT):
        name = f"bench-c{client}-{pair}"
        lines += [f"apps:create {name}\n".encode(), f"apps:destroy {name} --force\n".encode()]
    return lines


WORKLOADS = {"ping": ping_script, "apps:create/destroy": apps_script}


@dataclass
class Outcome:
    workload: str
    server: str
    requested: int
    elapsed: float = 0.0
    timed_out: bool = False
    failed: int = 0
    first_failure: bytes = b""
    latencies: list[float] = field(default_factory=list)  # seconds, sorted once all are in

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def record(self, answer: bytes, latency: float) -> None:
        self.latencies.append(latency)
        if not answer.startswith(OK_PREFIX):
            self.failed += 1
            self.first_failure = self.first_failure or answer

    def row(self) -> list[str]:
        done = f"{len(self.latencies)}/{self.requested}" + (" (time limit)" if self.timed_out else "")
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return [self.workload, self.server, str(CLIENTS), done, str(self.failed), f"{self.elapsed:.2f}",
                f"{self.rate:,.0f}", ms(p50), ms(p99)]  # fmt: skip


async def drive(path: Path, scripts: Sequence[Sequence[bytes]], outcome: Outcome) -> None:
    """Connect every client first, then let them all go at once; time from the go to the last answer."""
    go = trio.Event()

    async def client(script: Sequence[bytes], *, task_status: trio.TaskStatus[None]) -> None:
        conn = await LineStream.connect(path)
        try:
            task_status.started()
            await go.wait()
            for line in script:
                sent = time.perf_counter()
                answer = await conn.request(line)
                outcome.record(answer, time.perf_counter() - sent)
        finally:
            await conn.aclose()

    started = time.perf_counter()
    with trio.move_on_after(SERIES_TIME_LIMIT) as limit:
        async with trio.open_nursery() as nursery:
            for script in scripts:
                await nursery.start(client, script)
            started = time.perf_counter()
            go.set()
    outcome.elapsed = time.perf_counter() - started
    outcome.timed_out = limit.cancelled_caught


def measure(server: ServerProcess, workload: str) -> Outcome:
    scripts = [WORKLOADS[workload](client) for client in range(CLIENTS)]
    outcome = Outcome(workload, server.label, sum(len(script) for script in scripts))
    try:
        trio.run(drive, server.socket, scripts, outcome)
    except BaseExceptionGroup as group:
        raise first_of(group) from None
    outcome.latencies.sort()
    return outcome


def first_of(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A Ctrl-C first, else the first failure: what the nursery of clients gathered, as one exception."""
    interrupted = group.subgroup(KeyboardInterrupt)
    leaves = (interrupted or group).exceptions
    first = leaves[0]
    return first_of(first) if isinstance(first, BaseExceptionGroup) else first


def run(berthd: ServerProcess, echo: ServerProcess, unaudited: ServerProcess | None = None) -> None:
    print_title(
        f"throughput ({CLIENTS} concurrent clients, one connection each; commands per second)",
        f"ping: {PINGS_PER_CLIENT} a client; apps: {APP_PAIRS_PER_CLIENT} create+destroy pairs a client "
        "(the echo server answers those lines without doing anything).",
        "p50/p99: ms from a client's request to its answer, while all clients run.",
    )
    outcomes = {(workload, server.label): measure(server, workload) for workload in WORKLOADS
                for server in (echo, berthd)}  # fmt: skip
    print_table(
        ["workload", "server", "clients", "commands", "errors", "seconds", "cmds/s", "p50", "p99"],
        [outcome.row() for outcome in outcomes.values()],
    )
    for outcome in outcomes.values():
        if outcome.failed:
            print(
                f"   {outcome.server}, {outcome.workload}: first error answer {outcome.first_failure[:200]!r}"
            )
    print_comparisons(
        [
            Comparison(
                f"berthd / echo cmds/s, {workload}",
                outcomes[workload, berthd.label].rate / outcomes[workload, echo.label].rate,
                NO_GOAL,
            )
            for workload in WORKLOADS
        ]
    )
    if unaudited is not None:
        compare_audit(berthd, unaudited)


def compare_audit(audited: ServerProcess, unaudited: ServerProcess) -> None:
    """Rates swing with what else the machine runs; the server's own CPU time a command swings less."""
    unaudited.label = "berthd --audit-log off"
    print_title(
        f"the audit log's cost: ping, {CLIENTS} clients, audit log on (the default) and off",
        f"best of {AUDIT_ROUNDS} series each, in turns; CPU: the server process's user+system time a command.",
    )
    best: dict[str, Outcome] = {}
    cpu: dict[str, float] = {}
    for _ in range(AUDIT_ROUNDS):
        for server in (audited, unaudited):
            process = psutil.Process(server.pid)
            before = process.cpu_times()
            outcome = measure(server, "ping")
            after = process.cpu_times()
            used = (after.user - before.user + after.system - before.system) / len(outcome.latencies)
            cpu[server.label] = min(cpu.get(server.label, used), used)
            if server.label not in best or outcome.rate > best[server.label].rate:
                best[server.label] = outcome
    print_table(
        ["workload", "server", "clients", "commands", "errors", "seconds", "cmds/s", "p50", "p99", "CPU/cmd"],
        [[*outcome.row(), f"{cpu[label] * 1e6:.1f} us"] for label, outcome in best.items()],
    )
    on, off = best[audited.label], best[unaudited.label]
    print_comparisons(
        [
            Comparison("ping cmds/s, audit log on / off", on.rate / off.rate, NO_GOAL),
            Comparison(
                "server CPU a ping, audit log on / off", cpu[audited.label] / cpu[unaudited.label], NO_GOAL
            ),
        ]
    )
