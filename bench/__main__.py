"""`python -m bench [BENCHMARK ...]`: run the benchmarks (all by default) and print their tables.

Every process it starts is stopped and its temp dir removed on the way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import pstats
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from bench import (
    access_rules,
    capabilities,
    containment,
    docker,
    fairness,
    gitsync,
    latency,
    logcapture,
    memory,
    oneshot,
    startup,
    supervision,
    throughput,
    uploads,
)
from bench.machine import print_machine
from bench.processes import STOP_TIMEOUT, BenchError, ServerProcess, Session

# The native runner's: each starts a berthd of its own, with the options it needs.
NATIVE_RUNNER: dict[str, Callable[[Session, Path | None], None]] = {
    "run": oneshot.run,
    "containment": containment.run,
    "log-capture": logcapture.run,
    "supervision": supervision.run,
    "uploads": uploads.run,
    "git-sync": gitsync.run,
    "docker": docker.run,
}
BENCHMARKS = (
    "latency",
    "throughput",
    "startup",
    "memory",
    "capabilities",
    "fairness",
    "access-rules",
    *NATIVE_RUNNER,
)
PROFILE_LINES = 25


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "benchmarks", nargs="*", metavar="BENCHMARK", help=f"any of {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        type=Path,
        help="run berthd under cProfile and print the top functions: the berthd of the latency and "
        "throughput benchmarks writes its stats to FILE, that of run, log-capture and supervision to "
        "FILE.run and so on (the figures are then slower than usual)",
    )
    return parser


def interrupt(signum: int, frame: FrameType | None) -> None:
    # As a SIGINT, so that inside trio.run trio's own handler turns it into a clean KeyboardInterrupt.
    signal.raise_signal(signal.SIGINT)


def run(selected: Sequence[str], session: Session, profile: Path | None) -> None:
    if "startup" in selected:
        startup.run(session)
    loaded: tuple[ServerProcess, ServerProcess] | None = None
    if "latency" in selected or "throughput" in selected:
        # One berthd and one echo server for both; memory reads their size afterwards.
        berthd, echo = session.start_berthd(profile_to=profile), session.start_echo()
        berthd.wait_ready()
        echo.wait_ready()
        loaded = (berthd, echo)
        if "latency" in selected:
            latency.run(session, berthd, echo)
        if "throughput" in selected:
            unaudited = session.start_berthd(options=["--audit-log", "off"])
            unaudited.wait_ready()
            throughput.run(berthd, echo, unaudited)
            session.stop(unaudited)
    if "memory" in selected:
        memory.run(session, loaded)
    if "capabilities" in selected:
        capabilities.run(session)
    if "fairness" in selected:
        fairness.run(session)
    if "access-rules" in selected:
        access_rules.run(session)
    if profile is not None and loaded is not None:
        session.stop(loaded[0])  # cProfile writes its file as berthd exits
        print_profile("the loaded berthd", profile)
    for name, run_benchmark in NATIVE_RUNNER.items():
        if name in selected:
            own_profile = profile.with_name(f"{profile.name}.{name}") if profile else None
            run_benchmark(session, own_profile)  # its berthd has stopped when it returns
            if own_profile is not None:
                print_profile(f"the berthd of {name}", own_profile)


def print_profile(whose: str, path: Path) -> None:
    print(f"\n== profile of {whose} ({path}), top {PROFILE_LINES} by own time ==")
    pstats.Stats(str(path), stream=sys.stdout).sort_stats("tottime").print_stats(PROFILE_LINES)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(args.benchmarks) - set(BENCHMARKS))
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; there are {', '.join(BENCHMARKS)}")
    selected = args.benchmarks or BENCHMARKS
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    began = time.perf_counter()
    print("berthd benchmarks: figures only; nothing here passes or fails on a timing")
    print_machine()
    session = Session()
    try:
        run(selected, session, args.profile.resolve() if args.profile else None)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    except (BenchError, OSError) as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        return 1
    finally:
        # a second Ctrl-C must not leave servers or the temp dir behind
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        session.close()
        for server in session.killed:
            print(
                f"bench: {server} did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM: killed",
                file=sys.stderr,
            )
    print(f"\ndone in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
