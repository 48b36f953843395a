"""One-shot runs: `run APP` of /bin/true through berthd, from the request to its final answer, against
`subprocess.run(["/bin/true"])` in the benchmark's own process (goal: berthd within 3x).

berthd's figure is all a `run` costs: the request, a job record saved before and after (SQLite
commits), the job's folder and output files, the spawn, the wait, the answer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.clients import OK_PREFIX, LineSocket
from bench.processes import BenchError, ServerProcess, Session
from bench.report import (
    LATENCY_HEADERS,
    Comparison,
    Goal,
    latency_row,
    percentile,
    print_comparisons,
    print_table,
    print_title,
)
from bench.timing import interleaved
from berth.client import Client

TRUE = "/bin/true"
APP = "truth"
RUN = f"run {APP}\n".encode()
WARMUP = 20
RUNS = 200
BLOCKS = 10
SERIES_TIME_LIMIT = 30.0
SETUP_TIMEOUT = 30.0

WITHIN_3X = Goal("berthd within 3x", lambda ratio: ratio <= 3.0)


def create_app(berthd: ServerProcess) -> None:
    with Client(berthd.socket, timeout=SETUP_TIMEOUT) as client:
        answer = client.call(["apps:from-local", APP, TRUE])
    if not answer.ok:
        raise BenchError(f"berthd refused apps:from-local {APP} {TRUE}: {answer.output}")


def measure(berthd: ServerProcess) -> tuple[list[float], list[float]]:
    with LineSocket(berthd.socket, timeout=SETUP_TIMEOUT) as conn:

        def through_berthd() -> None:
            answer = conn.final(RUN)
            if not answer.startswith(OK_PREFIX):
                raise BenchError(f"berthd answered `run {APP}` with {answer[:300]!r}")

        def in_process() -> None:
            subprocess.run([TRUE], check=True)

        for _ in range(WARMUP):
            in_process()
            through_berthd()
        local, berthd_samples = interleaved([in_process, through_berthd], RUNS, BLOCKS, SERIES_TIME_LIMIT)
    return local, berthd_samples


def run(session: Session, profile_to: Path | None = None) -> None:
    print_title(
        f"one-shot run of {TRUE}: request to final answer (ms)",
        f"{WARMUP} warm-up runs each, then {RUNS} timed, alternating in {BLOCKS} blocks; "
        "berthd on one persistent connection.",
    )
    berthd = session.start_berthd(profile_to=profile_to)
    try:
        berthd.wait_ready()
        create_app(berthd)
        local, through_berthd = measure(berthd)
    finally:
        session.stop(berthd)
    print_table(
        LATENCY_HEADERS,
        [
            latency_row(f"subprocess.run({TRUE}) in the bench", local, RUNS),
            latency_row(f"berthd `run {APP}`", through_berthd, RUNS),
        ],
    )
    print_comparisons(
        [
            Comparison(
                f"berthd p{q} / subprocess.run p{q}",
                percentile(through_berthd, q) / percentile(local, q),
                WITHIN_3X,
            )
            for q in (50, 99)
        ]
    )
