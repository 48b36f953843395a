"""What containment costs a spawn: berthd's spawner (a unit: shim, fork, exec) against a bare Popen of
the program (what berthd did before units, less its exec helper), in the benchmark's own process. Both
fork off the event loop's thread (the bare Popen on a trio worker thread, the spawner on its own), so
the hand-over between threads is in both figures.

Two figures each: "start", from the request until the program was exec'd (what a supervised process
waits before it is RUNNING; the unit is then killed, untimed), and "run", spawn to exit and reap of
/bin/true (the process part of `run /bin/true`; the `run` benchmark times the whole request). The C
shim is the usual one; the Python shim is the fallback without a C compiler. Each shim's calls
alternate in blocks with bare Popens of their own: the C shim's series first, then the Python shim's
(together, the Python shims' start-up load would weigh on the C shim's figures).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bench import report
from bench.oneshot import BLOCKS, RUNS, SERIES_TIME_LIMIT, TRUE
from bench.processes import BenchError, Session
from bench.timing import interleaved
from berthd.runners.native.spawn import UNIT_KILL, Child, Shim, Spawner, SpawnRequest, c_shim, python_shim

SLEEP = ["/bin/sleep", "1000"]
WARMUP = 10  # the series are those of the `run` benchmark otherwise
ENV = {"PATH": "/usr/bin:/bin"}

WITHIN_2X = report.Goal("unit within 2x of a bare Popen", lambda ratio: ratio <= 2.0)

Call = Callable[[], Awaitable[None]]


def bare_start(started: list[subprocess.Popen[bytes]]) -> Call:
    async def call() -> None:
        started.append(
            subprocess.Popen(
                SLEEP,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )  # fmt: skip
        )

    return call


def bare_run() -> Call:
    async def call() -> None:
        subprocess.run(
            [TRUE], stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True, check=True
        )

    return call


def unit_start(spawner: Spawner, nursery: trio.Nursery, started: list[Child]) -> Call:
    async def call() -> None:
        child = await spawner.spawn(SpawnRequest(SLEEP, None, ENV))
        nursery.start_soon(child.watch)
        started.append(child)

    return call


def unit_run(spawner: Spawner, nursery: trio.Nursery) -> Call:
    async def call() -> None:
        child = await spawner.spawn(SpawnRequest([TRUE], None, ENV))
        nursery.start_soon(child.watch)
        if await child.wait() != 0:
            raise BenchError(f"{TRUE} through the unit shim did not exit 0")
        await child.aclose()

    return call


async def series(calls: list[Call], cleanup: Callable[[], Awaitable[None]]) -> list[list[float]]:
    """bench.timing.interleaved on a worker thread, each call (and `cleanup`, after each block) run
    back in trio: the hop is in every figure alike."""
    for call in calls:
        for _ in range(WARMUP):
            await call()
    await cleanup()

    def in_trio(call: Call) -> Callable[[], None]:
        return functools.partial(trio.from_thread.run, call)

    timed = [in_trio(call) for call in calls]
    return await trio.to_thread.run_sync(
        functools.partial(interleaved, timed, RUNS, BLOCKS, SERIES_TIME_LIMIT, in_trio(cleanup))
    )


def _given(shim: Shim) -> Shim:
    return shim


async def measure(shim: Shim) -> dict[str, tuple[list[float], list[float]]]:
    """ "start" and "run", each (bare Popen, unit) timed in one interleaved series."""
    async with trio.open_nursery() as nursery:
        spawner = Spawner(functools.partial(_given, shim))
        children: list[Child] = []
        bare_procs: list[subprocess.Popen[bytes]] = []

        async def cleanup() -> None:
            for child in children:
                child.signal_unit(UNIT_KILL)
            for child in children:
                await child.wait()
                await child.aclose()
            children.clear()
            for proc in bare_procs:
                proc.kill()
                proc.communicate()
            bare_procs.clear()

        try:
            bare, unit = await series(
                [bare_start(bare_procs), unit_start(spawner, nursery, children)], cleanup
            )
            results = {"start": (bare, unit)}
            bare, unit = await series([bare_run(), unit_run(spawner, nursery)], cleanup)
            results["run"] = (bare, unit)
        finally:
            await cleanup()
            spawner.close()
    return results


def run(session: Session, profile_to: Path | None = None) -> None:
    report.print_title(
        "spawn cost of a contained process (ms), in the bench's own process",
        f"{WARMUP} warm-up calls each, then {RUNS} timed, alternating in {BLOCKS} blocks; "
        f"start: until {' '.join(SLEEP)} was exec'd; run: {TRUE} to its exit and reap.",
    )
    rows, comparisons = [], []
    for shim in (shim for shim in (c_shim(), python_shim()) if shim is not None):
        for kind, (bare, unit) in trio.run(measure, shim).items():
            rows += [
                report.latency_row(f"{kind}: bare Popen", bare, RUNS),
                report.latency_row(f"{kind}: {shim.kind} shim", unit, RUNS),
            ]
            goal = WITHIN_2X if shim.kind == "C" else report.NO_GOAL
            comparisons += [
                report.Comparison(
                    f"{kind}: {shim.kind} shim p{q} / bare p{q}",
                    report.percentile(unit, q) / report.percentile(bare, q),
                    goal,
                )
                for q in (50, 99)
            ]
    report.print_table(report.LATENCY_HEADERS, rows)
    report.print_comparisons(comparisons)
