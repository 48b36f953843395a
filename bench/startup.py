"""Time from spawning the server to accepting connections, and to answering its first `ping`.

"Accepting" is the first connect() that succeeds (polled every 2 ms): the socket listens, though the
server may still be starting behind it. "Answering" is the `ping` then sent on that connection.
berthd is started with a new data dir (it creates the database) and on an existing one (a restart);
the bare trio echo server is the baseline, and a Python that does nothing the floor.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.clients import PING, LineSocket, check_pong
from bench.processes import ServerProcess, Session, time_to_exit
from bench.report import NO_GOAL, Comparison, Goal, median, ms, print_comparisons, print_table, print_title

STARTS = 10
SERIES_TIME_LIMIT = 30.0

UNDER_1S = Goal("under 1 s", lambda seconds: seconds < 1.0)


@dataclass
class Starts:
    what: str
    accepting: list[float] = field(default_factory=list)
    answering: list[float] = field(default_factory=list)

    def row(self) -> list[str]:
        answering = [ms(median(self.answering)), ms(max(self.answering))] if self.answering else ["-", "-"]
        return [self.what, str(len(self.accepting)), ms(median(self.accepting)), ms(min(self.accepting)),
                ms(max(self.accepting)), *answering]  # fmt: skip


def repeat(starts: Starts, one_start: Callable[[Starts], None]) -> Starts:
    deadline = time.perf_counter() + SERIES_TIME_LIMIT
    while len(starts.accepting) < STARTS and (not starts.accepting or time.perf_counter() < deadline):
        one_start(starts)
    return starts


def start_and_ping(session: Session, start: Callable[[], ServerProcess]) -> Callable[[Starts], None]:
    def one_start(starts: Starts) -> None:
        server = start()
        try:
            starts.accepting.append(server.wait_ready())
            with LineSocket(server.socket) as conn:
                check_pong(conn.request(PING), server.label)
            starts.answering.append(time.perf_counter() - server.spawned_at)
        finally:
            session.stop(server)

    return one_start


def interpreter_only(starts: Starts) -> None:
    starts.accepting.append(time_to_exit([sys.executable, "-c", "pass"]))


def run(session: Session) -> None:
    print_title(
        "start-up: from spawning the process (ms)",
        f"{STARTS} starts each, the server stopped between them; for `python -c pass`, spawn to exit.",
    )
    data_dirs: list[Path] = []

    def berthd_new_data_dir() -> ServerProcess:
        data_dirs.append(session.new_dir("data"))
        return session.start_berthd(data_dirs[-1])

    def berthd_existing_data_dir() -> ServerProcess:
        return session.start_berthd(data_dirs[0])

    floor = repeat(Starts("python -c pass"), interpreter_only)
    echo = repeat(Starts("bare trio echo"), start_and_ping(session, session.start_echo))
    fresh = repeat(Starts("berthd, new data dir"), start_and_ping(session, berthd_new_data_dir))
    restart = repeat(Starts("berthd, existing data dir"), start_and_ping(session, berthd_existing_data_dir))
    print_table(
        ["process", "starts", "accepting: median", "min", "max", "answering: median", "max"],
        [starts.row() for starts in (floor, echo, fresh, restart)],
    )
    print_comparisons(
        [
            Comparison("berthd accepting, new data dir", median(fresh.accepting), UNDER_1S, unit="s"),
            Comparison("berthd accepting, existing data dir", median(restart.accepting), UNDER_1S, unit="s"),
            Comparison("berthd answering, new data dir", median(fresh.answering), UNDER_1S, unit="s"),
            Comparison("berthd / echo accepting", median(fresh.accepting) / median(echo.accepting), NO_GOAL),
            Comparison("berthd / echo answering", median(fresh.answering) / median(echo.answering), NO_GOAL),
        ]
    )
