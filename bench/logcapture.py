"""Log capture: a child writing 200 MB of 100-byte lines, supervised by berthd (`ps:start`), timed until
berthd's log files hold every line; against the same child with its stdout sent to a file by the shell
(`sh -c 'writer > file'`, the goal's baseline: berthd at least half its MB/s) and, for reference,
through a pipe (`writer | cat > file`, as berthd reads it).

Every line carries its sequence number (`line_writer`); after each run the logged lines are checked
against what was written, byte for byte and in order, and any lost or damaged ones are counted.
berthd runs with log files large and many enough (`--log-max-bytes`, `--log-backups`) that rotation
happens but removes nothing, and the count goes across the rotated files.
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import line_writer
from bench.clients import LineSocket, request_ok
from bench.processes import BenchError, ServerProcess, Session, run_in_own_group
from bench.report import NO_GOAL, Comparison, Goal, print_comparisons, print_table, print_title
from berth.client import Client

LINES = 2_000_000
WIDTH = 100  # bytes a line, its newline included
MB = 1_000_000
REPEATS = 3  # each side; the median is compared
WRITER = Path(line_writer.__file__).resolve()
LOG_MAX_BYTES = 64 * 2**20
LOG_BACKUPS = 8  # room for 9 x 64 MiB: the 2 M lines take about 264 MB with berthd's prefixes
LOGGED_LINE = re.compile(rb"^\S+ stdout (.*)$", re.MULTILINE)  # `TIMESTAMP STREAM TEXT`
LOG_PREFIX = len(b"2000-01-01T00:00:00.000Z stdout ")
POLL = 0.005
STATE_POLL = 0.25
CAPTURE_TIME_LIMIT = 120.0
SHELL_TIME_LIMIT = 60.0
EXIT_WAIT = 10.0
SETUP_TIMEOUT = 30.0

HALF_OR_BETTER = Goal("berthd at least 0.5x", lambda ratio: ratio >= 0.5)
NONE = Goal("none", lambda count: count == 0)


@dataclass
class Capture:
    what: str
    seconds: float
    intact: int  # lines written that are in the files, byte for byte
    in_order: bool = True
    first_problem: str = ""

    @property
    def rate(self) -> float:
        return LINES * WIDTH / MB / self.seconds

    @property
    def lost(self) -> int:
        return LINES - self.intact


def writer_args() -> list[str]:
    return [sys.executable, str(WRITER), str(LINES), str(WIDTH)]


def check(what: str, seconds: float, captured: bytes, expected: bytes) -> Capture:
    """`captured`: the lines as they were logged, each with its newline."""
    if captured == expected:
        return Capture(what, seconds, LINES)
    wanted, got = expected.split(b"\n")[:-1], captured.split(b"\n")[:-1]
    intact = set(wanted).intersection(got)
    first = next(
        (index for index, (a, b) in enumerate(zip(wanted, got, strict=False)) if a != b),
        min(len(wanted), len(got)),
    )
    shown = got[first][:40] if first < len(got) else b"<nothing>"
    instead = wanted[first][:40] if first < len(wanted) else b"<nothing>"
    in_order = [line for line in got if line in intact] == [line for line in wanted if line in intact]
    problem = f"{len(got):,} lines logged; line {first:,} is {shown!r}, expected {instead!r}"
    return Capture(what, seconds, len(intact), in_order, problem)


def through_shell(session: Session, expected: bytes, piped: bool) -> Capture:
    out = session.new_dir("shell") / "out.log"
    # `exec`: the writer is the shell's own process; with the pipe, cat writes the file
    script = '"$@" | cat > "$0"' if piped else 'exec "$@" > "$0"'
    seconds = run_in_own_group(["/bin/sh", "-c", script, str(out), *writer_args()], SHELL_TIME_LIMIT)
    captured = out.read_bytes()
    out.unlink()
    what = "sh: writer | cat > file" if piped else "sh: writer > file"
    return check(what, seconds, captured, expected)


def logged_bytes(folder: Path) -> int:
    total = 0
    for path in folder.glob("main.1.log*"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # rotated between the listing and the stat
            return -1
    return total


def state_of(conn: LineSocket, app: str) -> bytes:
    answer = conn.request(f"ps:report {app}\n".encode())
    found = re.search(rb'"state":"([A-Z]+)"', answer)
    return found.group(1) if found else b"?"


def wait_until_logged(conn: LineSocket, app: str, folder: Path, started: float) -> float:
    """Seconds from `started` until the log files are big enough to hold every line; if the process
    has exited and they stopped growing before that, or past the time limit, until then."""
    enough = LINES * (LOG_PREFIX + WIDTH)
    last_size, next_state_check = -1, started + STATE_POLL
    while True:
        size = logged_bytes(folder)
        now = time.perf_counter()
        if size >= enough or now - started > CAPTURE_TIME_LIMIT:
            return now - started
        if now >= next_state_check:
            if size == last_size and state_of(conn, app) in (b"EXITED", b"FAILED"):
                return now - started
            last_size, next_state_check = size, now + STATE_POLL
        time.sleep(POLL)


def logged_output(folder: Path) -> bytes:
    """What the process wrote on stdout, from the log files (oldest first) without berthd's prefixes."""
    rotated = sorted(folder.glob("main.1.log.*"), key=lambda path: -int(path.suffix[1:]))
    lines: list[bytes] = []
    for path in [*rotated, folder / "main.1.log"]:
        lines += LOGGED_LINE.findall(path.read_bytes())
    return b"\n".join(lines) + b"\n" if lines else b""


def through_berthd(berthd: ServerProcess, data_dir: Path, expected: bytes, index: int) -> Capture:
    app = f"lines-{index}"
    with Client(berthd.socket, timeout=SETUP_TIMEOUT) as client:
        created = client.call(["apps:from-local", app, sys.executable, "--restart-policy", "no", "--",
                               *writer_args()[1:]])  # fmt: skip
    if not created.ok:
        raise BenchError(f"berthd refused apps:from-local {app}: {created.output}")
    folder = data_dir / "apps" / app / "logs"
    with LineSocket(berthd.socket, timeout=SETUP_TIMEOUT) as conn:
        started = time.perf_counter()
        request_ok(conn, f"ps:start {app}")
        seconds = wait_until_logged(conn, app, folder, started)
        deadline = time.perf_counter() + EXIT_WAIT
        while state_of(conn, app) not in (b"EXITED", b"FAILED") and time.perf_counter() < deadline:
            time.sleep(STATE_POLL)
        capture = check("berthd: ps:start, logs", seconds, logged_output(folder), expected)
        request_ok(conn, f"apps:destroy {app} --force")  # its 264 MB of logs go with it
    return capture


def run(session: Session, profile_to: Path | None = None) -> None:
    print_title(
        f"log capture: {LINES:,} lines of {WIDTH} bytes ({LINES * WIDTH / MB:.0f} MB) from one child",
        "From spawning the child until the file(s) hold every line; each side run "
        f"{REPEATS} times, alternating, the median compared.",
        f"berthd: --log-max-bytes {LOG_MAX_BYTES} --log-backups {LOG_BACKUPS} (rotates, loses nothing); "
        "every run's lines checked in order and byte for byte.",
    )
    expected = line_writer.expected(LINES, WIDTH)
    data_dir = session.new_dir("data")
    options = ["--log-max-bytes", str(LOG_MAX_BYTES), "--log-backups", str(LOG_BACKUPS)]
    berthd = session.start_berthd(data_dir, profile_to=profile_to, options=options)
    runs: dict[str, list[Capture]] = {}
    try:
        berthd.wait_ready()
        for index in range(REPEATS):
            for capture in (
                through_shell(session, expected, piped=False),
                through_shell(session, expected, piped=True),
                through_berthd(berthd, data_dir, expected, index),
            ):
                runs.setdefault(capture.what, []).append(capture)
    finally:
        session.stop(berthd)
    rows = []
    for what, captures in runs.items():
        rates = [capture.rate for capture in captures]
        lost = sum(capture.lost for capture in captures)
        disordered = sum(not capture.in_order for capture in captures)
        rows.append([what, str(len(captures)), f"{statistics.median(c.seconds for c in captures):.2f}",
                     f"{statistics.median(rates):.0f}", f"{min(rates):.0f}", f"{max(rates):.0f}",
                     f"{lost:,}", str(disordered)])  # fmt: skip
    print_table(
        ["how", "runs", "seconds (median)", "MB/s (median)", "min", "max", "lines lost", "runs out of order"],
        rows,
    )
    for captures in runs.values():
        for capture in captures:
            if capture.first_problem:
                print(f"   {capture.what}: {capture.first_problem}")
    median_rate = {what: statistics.median(c.rate for c in captures) for what, captures in runs.items()}
    berthd_runs = runs["berthd: ps:start, logs"]
    print_comparisons(
        [
            Comparison(
                "berthd / `writer > file` MB/s",
                median_rate["berthd: ps:start, logs"] / median_rate["sh: writer > file"],
                HALF_OR_BETTER,
            ),
            Comparison(
                "berthd / `writer | cat > file` MB/s",
                median_rate["berthd: ps:start, logs"] / median_rate["sh: writer | cat > file"],
                NO_GOAL,
            ),
            Comparison(
                f"lines berthd lost or damaged, {len(berthd_runs)} runs",
                sum(capture.lost for capture in berthd_runs),
                NONE,
                unit="lines",
            ),
            Comparison(
                f"berthd runs with lines out of order, of {len(berthd_runs)}",
                sum(not capture.in_order for capture in berthd_runs),
                NONE,
                unit="runs",
            ),
        ]
    )
