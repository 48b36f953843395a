"""`system:capabilities` latency while the capability probe is slow, with `ping` in the same run as baseline.

berthd runs under bench.slow_probe: NVML takes PROBE_SECONDS to initialise and the Docker engine as long
to answer, and a full probe starts again PROBE_INTERVAL after the last, so one is in flight nearly all
the time. The command answers from the cache, so it should cost little more than `ping` (goal: p50 under
5 ms). The engine stand-in numbers its answers, which tells how many probes ran during the timing.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable

import msgspec

from bench.clients import OK_PREFIX, PING, LineSocket, check_pong
from bench.processes import READY_TIMEOUT, BenchError, ServerProcess, Session
from bench.report import (
    NO_GOAL,
    Comparison,
    Goal,
    ms,
    percentile,
    print_comparisons,
    print_table,
    print_title,
)
from bench.slow_probe import VERSION_PREFIX
from bench.timing import interleaved

CAPABILITIES = b"system:capabilities\n"
PROBE_SECONDS = 0.25  # NVML's init, and again the engine: a full probe takes about twice this
PROBE_INTERVAL = 0.05
WARMUP = 200
REQUESTS = 10_000  # a few seconds: several probes run meanwhile
BLOCKS = 10
SERIES_TIME_LIMIT = 20.0

UNDER_5_MS = Goal("under 5 ms", lambda value: value < 5.0)


def start_slow_berthd(session: Session) -> ServerProcess:
    workdir = session.new_dir("berthd-slow-probe")
    sock = workdir / "berthd.sock"
    args = [
        sys.executable, "-m", "bench.slow_probe", str(PROBE_SECONDS), str(PROBE_INTERVAL),
        "--socket", str(sock),
        "--data-dir", str(workdir / "data"),
        "--log-file", str(workdir / "berthd.log"),
    ]  # fmt: skip
    # Session has no way to start berthd through another module; _spawn is what its own starts use.
    return session._spawn("berthd (slow probe)", args, sock, workdir)


def capabilities(conn: LineSocket) -> bytes:
    answer = conn.request(CAPABILITIES)
    if not answer.startswith(OK_PREFIX):
        raise BenchError(f"berthd answered `system:capabilities` with {answer[:300]!r}")
    return answer


def probes_done(conn: LineSocket) -> int:
    """The number of the latest full probe, from the engine stand-in's version."""
    version = msgspec.json.decode(capabilities(conn))["data"]["docker_version"]
    if not (isinstance(version, str) and version.startswith(VERSION_PREFIX)):
        raise BenchError(f"berthd is not running under bench.slow_probe: docker_version {version!r}")
    return int(version.removeprefix(VERSION_PREFIX))


def wait_first_answer(conn: LineSocket) -> None:
    deadline = time.perf_counter() + READY_TIMEOUT
    while True:
        try:
            capabilities(conn)
            return
        except BenchError:
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.05)


def run(session: Session) -> None:
    print_title(
        "system:capabilities latency while the probe is slow (one client, sequential requests; ms)",
        f"NVML init and the Docker engine each take {PROBE_SECONDS} s; a full probe every "
        f"{PROBE_INTERVAL} s after the last.",
        f"{WARMUP} warm-up requests each, then {REQUESTS} timed of each, alternating in blocks with `ping`.",
    )
    berthd = start_slow_berthd(session)
    try:
        berthd.wait_ready()
        with LineSocket(berthd.socket) as conn:
            wait_first_answer(conn)
            requests: list[Callable[[], object]] = [
                functools.partial(check_pong_on, conn, berthd.label),
                functools.partial(capabilities, conn),
            ]
            for request in requests:
                for _ in range(WARMUP):
                    request()
            before = probes_done(conn)
            began = time.perf_counter()
            ping_samples, capability_samples = interleaved(requests, REQUESTS, BLOCKS, SERIES_TIME_LIMIT)
            elapsed = time.perf_counter() - began
            after = probes_done(conn)
    finally:
        session.stop(berthd)
    rows = [
        [command, str(len(samples)), ms(percentile(samples, 50)), ms(percentile(samples, 90)),
         ms(percentile(samples, 99)), ms(samples[-1])]
        for command, samples in (("ping", ping_samples), ("system:capabilities", capability_samples))
    ]  # fmt: skip
    print_table(["command", "n", "p50", "p90", "p99", "max"], rows)
    probes = after - before
    print(
        f"\n{probes} full probes ended during the {elapsed:.1f} s of timing, each about "
        f"{2 * PROBE_SECONDS:.1f} s: one in flight about {min(1.0, probes * 2 * PROBE_SECONDS / elapsed):.0%} "
        "of the time"
    )
    print_comparisons(
        [
            Comparison(
                "system:capabilities p50", percentile(capability_samples, 50) * 1000, UNDER_5_MS, "ms"
            ),
            Comparison("system:capabilities p99", percentile(capability_samples, 99) * 1000, NO_GOAL, "ms"),
            Comparison(
                "capabilities p50 / ping p50",
                percentile(capability_samples, 50) / percentile(ping_samples, 50),
                NO_GOAL,
            ),
        ]
    )


def check_pong_on(conn: LineSocket, label: str) -> None:
    check_pong(conn.request(PING), label)


if __name__ == "__main__":
    from bench.machine import print_machine

    print_machine()
    with Session() as bench_session:
        run(bench_session)
