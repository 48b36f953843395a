"""Whatever a client or an app does, berthd's memory, CPU and disk stay bounded, and others get answers.

Each test is an attack as a user would mount it: a client that never reads a streaming answer, a
Procfile line that is long and quote-heavy, output with no newline, a run that prints without end,
runs by the hundred, upload sessions by the dozen.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from berth.client import Client
from berthd.commands.logs import MAX_ANSWER_BYTES
from berthd.sources.procfile import MAX_LINE, parse_procfile
from berthd.supervision.logs import MAX_LOG_LINE, LineCutter
from tests.daemon_proc import Berthd
from tests.test_native_runner import create, wait_for
from tests.wire import RawConnection

MB = 1000 * 1000
MIB = 1024 * 1024


class Pinger:
    """Another client, pinging all along: the longest a `ping` took, and how many were answered."""

    def __init__(self, daemon: Berthd) -> None:
        self.daemon = daemon
        self.worst = 0.0
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Client(self.daemon.socket, timeout=60) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                assert client.call("ping").output == "pong"
                self.worst = max(self.worst, time.monotonic() - started)
                self.answered += 1
                time.sleep(0.02)

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@contextmanager
def sampled_rss(daemon: Berthd) -> Iterator[list[int]]:
    """berthd's resident memory, sampled every 50 ms while the block runs."""
    assert daemon.proc is not None
    process = psutil.Process(daemon.proc.pid)
    samples = [process.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            samples.append(process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# 1. a client that does not read


def test_a_client_that_never_reads_a_run_of_100_mb_of_empty_lines_costs_bounded_memory(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    total = 100 * MB
    daemon = start_berthd(extra_args=["--job-output-max-bytes", str(2 * total)])
    create(daemon, "flood", "/bin/sh", "--", "-c", f"head -c {total} /dev/zero | tr '\\0' '\\n'")
    jobs = daemon.data_dir / "apps" / "flood" / "jobs"
    conn = RawConnection(daemon.socket, 120)
    with sampled_rss(daemon) as rss, Pinger(daemon) as pinger:
        conn.send(b"run flood\n")  # and read nothing while it runs
        wait_for(lambda: any(f.stat().st_size == total for f in jobs.glob("*/stdout.txt")), timeout=120)
        time.sleep(0.5)
    assert max(rss) - rss[0] < 150 * MB, f"berthd grew from {rss[0]} to {max(rss)} bytes"
    assert pinger.answered > 0 and pinger.worst < 1.0, pinger.worst
    print(f"berthd's RSS: {rss[0] / MB:.1f} MB at the start, {max(rss) / MB:.1f} MB at most")
    # now the client reads: what was held, then a count of what it missed, then the answer
    lines = missed = 0
    with conn:
        while "ok" not in (message := conn.read_message()):
            missed += int(message.get("missed", 0))
            lines += message["stream"] == "stdout"
    assert message["ok"] is True and message["data"]["exit_code"] == 0, message
    assert missed > 0 and lines > 0
    assert lines + missed == total  # every line either came or was counted


# 2. a quadratic parse on the event loop


def quote_heavy_line(words: int) -> bytes:
    """A long quoted value full of blanks (the old parser re-split every prefix at every blank: 8.7 s
    for 8 KB, growing with the square: minutes for this), then many quoted assignments and words."""
    long_value = "x " * 15_000
    assignments = " ".join(f'V{i}="a \\"quoted\\" b {i}"' for i in range(words))
    arguments = " ".join(f"'w {i}' \"x {i}\"" for i in range(words))
    return f'web: LONG="{long_value}" {assignments} sleep 1000 {arguments}\n'.encode()


def test_a_long_quote_heavy_procfile_line_parses_in_linear_time() -> None:
    line = quote_heavy_line(600)
    assert 50_000 < len(line) < MAX_LINE
    started = time.monotonic()
    types = parse_procfile(line)
    assert time.monotonic() - started < 0.5
    env = types["web"].env
    assert env["V7"] == 'a "quoted" b 7' and len(env) == 601 and env["LONG"] == "x " * 15_000
    assert types["web"].command.startswith("sleep 1000 'w 0' \"x 0\"")


def make_archive(path: Path, procfile: bytes) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("Procfile")
        info.size = len(procfile)
        tar.addfile(info, io.BytesIO(procfile))


def test_a_deploy_of_a_quote_heavy_procfile_keeps_other_clients_answered(
    berthd: Berthd, tmp_path: Path
) -> None:
    make_archive(tmp_path / "app.tar.gz", quote_heavy_line(600))
    with Pinger(berthd) as pinger:
        time.sleep(0.2)
        answer = berthd.call(["git:from-archive", "quotes", f"file://{tmp_path}/app.tar.gz"])
        time.sleep(0.2)
    assert answer.ok, answer.output
    assert pinger.answered > 0 and pinger.worst < 1.0, pinger.worst  # it was 8.7 s for 12 KB
    berthd.call("ps:stop quotes")


def test_a_procfile_over_the_limits_is_an_invalid_procfile(berthd: Berthd, tmp_path: Path) -> None:
    for name, procfile in (
        ("long-line", b"web: sleep 1 " + b"'x' " * (MAX_LINE // 4) + b"\n"),
        ("big-file", b"".join(b"t%d: sleep 1 %s\n" % (i, b"y" * 1000) for i in range(1000))),
    ):
        make_archive(tmp_path / f"{name}.tar.gz", procfile)
        with Pinger(berthd) as pinger:
            answer = berthd.call(["git:from-archive", name, f"file://{tmp_path}/{name}.tar.gz"])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), answer
        assert "longer than" in answer.output or "larger than" in answer.output, answer.output
        assert berthd.call(f"apps:info {name}").error == "not_found"  # a first deploy: nothing stays
        assert pinger.worst < 1.0


# 3. output without newlines


def test_output_without_newlines_is_cut_into_marked_pieces_within_the_log_limit(
    start_berthd: Callable[..., Berthd],
) -> None:
    max_bytes, backups = MIB, 2
    daemon = start_berthd(extra_args=["--log-max-bytes", str(max_bytes), "--log-backups", str(backups)])
    size = 60 * MB
    command = f"head -c {size} /dev/zero | tr '\\0' x; echo; echo END; exec sleep 1000"
    create(daemon, "noline", "/bin/sh", "--", "-c", command)
    started = time.monotonic()
    with Pinger(daemon) as pinger:
        assert daemon.call("ps:start noline").ok

        def last_line() -> str:
            lines = daemon.call("logs noline --num 1").data
            return str(lines[-1]["text"]) if lines else ""

        wait_for(lambda: last_line() == "END", timeout=120)
    took = time.monotonic() - started
    assert pinger.worst < 1.0, pinger.worst
    logs = daemon.data_dir / "apps" / "noline" / "logs"
    sizes = {p.name: p.stat().st_size for p in logs.iterdir()}
    assert max(sizes.values()) <= max_bytes, sizes
    assert folder_size(logs) <= (backups + 1) * max_bytes
    with RawConnection(daemon.socket) as conn:
        conn.send(b"logs noline --num 2\n")
        raw = conn.read_line()
    assert len(raw) < 64 * 1024  # it was 250 MB
    answer = json.loads(raw)
    assert [line["text"] for line in answer["data"]][-1] == "END"
    pieces = daemon.call("logs noline --num 5").data[:-1]
    assert all(set(line["text"]) == {"x"} for line in pieces)
    assert [line["continued"] for line in pieces][:-1] == [True] * (len(pieces) - 1)
    assert pieces[-1]["continued"] is False  # the piece its newline ended
    assert "[continues]" in daemon.call("logs noline --num 3").output
    daemon.call("ps:stop noline")
    print(f"60 MB without a newline logged in {took:.1f} s; longest ping {pinger.worst:.3f} s")


def test_the_line_cutter_gives_back_every_byte_in_lines_no_longer_than_its_limit() -> None:
    rng = random.Random(7)
    for _ in range(300):
        limit = rng.choice([4, 5, 8, 16])
        cutter = LineCutter(limit)
        data = bytes(rng.choice(b"ab\n\xc3\xa9") for _ in range(rng.randint(0, 200)))
        again: list[bytes] = []
        for start in range(0, len(data), step := rng.randint(1, 30)):
            for block, continued in cutter.complete("stdout", data[start : start + step]):
                assert all(len(line) <= limit for line in block.split(b"\n")[:-1])
                again.append(block[:-1] if continued else block)  # a piece's newline is berthd's
            assert len(cutter.partial.get("stdout", b"")) <= limit
        again += [block[:-1] for _, block in cutter.rest()]
        assert b"".join(again) == data
    started = time.monotonic()
    pieces = LineCutter().complete("stdout", b"x" * (50 * MB))  # one 50 MB line: linear, not quadratic
    assert len(pieces) == 50 * MB // MAX_LOG_LINE and time.monotonic() - started < 1.0


def test_a_logs_answer_holds_the_newest_lines_up_to_its_byte_limit(berthd: Berthd) -> None:
    command = f"head -c {20 * MB} /dev/zero | tr '\\0' y; echo; echo END; exec sleep 1000"
    create(berthd, "wide", "/bin/sh", "--", "-c", command)
    assert berthd.call("ps:start wide").ok
    wait_for(lambda: [line["text"] for line in berthd.call("logs wide --num 1").data] == ["END"], timeout=60)
    with RawConnection(berthd.socket) as conn:
        conn.send(b"logs wide --num 100000\n")
        raw = conn.read_line()
    assert len(raw) < 2 * MAX_ANSWER_BYTES + MB  # the text twice (output and data): it would be 40 MB
    answer = json.loads(raw)
    assert answer["output"].startswith("(older lines left out: an answer holds at most")
    assert answer["data"][-1]["text"] == "END"
    assert sum(len(line["text"]) for line in answer["data"]) > 0.9 * MAX_ANSWER_BYTES
    berthd.call("ps:stop wide")


# 4. run output and job folders


def test_a_run_keeps_at_most_its_output_limit_and_says_it_cut(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    limit = MIB
    daemon = start_berthd(extra_args=["--job-output-max-bytes", str(limit)])
    total = 20 * MB
    create(
        daemon, "chatty", "/bin/sh", "--", "-c", f"yes 'a line of output' | head -c {total}; echo done >&2"
    )
    events: list[dict[str, object]] = []
    with Client(daemon.socket, timeout=120) as client:
        answer = client.call("run chatty", on_event=events.append)
    assert answer.ok, answer.output  # the process ran to its end: its pipes were drained
    assert answer.data["truncated"] is True and answer.data["dropped_bytes"] == total + 5 - limit
    assert "output truncated" in answer.output
    folder = Path(answer.data["output_dir"])
    for name in ("stdout.txt", "stderr.txt", "logs.txt"):
        text = (folder / name).read_bytes()
        assert len(text) <= limit + 200, (name, len(text))
        assert text.rstrip().endswith(b"output truncated: a job keeps at most 1048576 bytes of output]")
    assert events[-1]["stream"] == "berthd" and "output truncated" in str(events[-1]["line"])
    assert daemon.call(f"jobs:info {answer.data['job_id']}").data["truncated"] is True


def test_job_folders_are_pruned_by_count_and_by_age(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--jobs-keep", "3", "--jobs-max-age", "4"])
    create(daemon, "often", "/bin/echo", "--", "hi")
    folders = [Path(daemon.call("run often").data["output_dir"]) for _ in range(5)]
    assert [f.exists() for f in folders] == [False, False, True, True, True]
    listed = [job["output_dir"] for job in daemon.call("jobs:list often").data]
    assert listed == [str(f) for f in reversed(folders[2:])]
    time.sleep(4.5)
    builds = daemon.data_dir / "apps" / "often" / "builds"
    for age in range(5):  # build folders, the same rules: the newest 3, none older than 4 s
        (builds / f"release-{age}").mkdir(parents=True)
        os.utime(builds / f"release-{age}", (time.time() - age * 0.1,) * 2)
    (builds / "ancient").mkdir()
    os.utime(builds / "ancient", (time.time() - 60,) * 2)
    latest = Path(daemon.call("run often").data["output_dir"])
    assert [f.exists() for f in folders] == [False] * 5 and latest.exists()
    assert [job["output_dir"] for job in daemon.call("jobs:list often").data] == [str(latest)]
    assert sorted(p.name for p in builds.iterdir()) == ["release-0", "release-1", "release-2"]


# 5. upload sessions


def test_upload_sessions_are_bounded_per_app_and_in_all(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--max-uploads-per-app", "2", "--max-uploads", "3"])

    def begin(app: str) -> tuple[bool, str | None, str]:
        answer = daemon.call(["upload:begin", app, "tool", "10", "1"])
        return answer.ok, answer.error, answer.data["session_id"] if answer.ok else answer.output

    first, second = begin("alpha"), begin("alpha")
    assert first[0] and second[0]
    ok, error, output = begin("alpha")
    assert (ok, error) == (False, "busy") and "alpha has 2 unfinished uploads" in output
    assert begin("beta")[0]  # the third in all
    ok, error, output = begin("gamma")
    assert (ok, error) == (False, "busy") and "3 unfinished uploads" in output
    # the sessions that exist are untouched, and ending one makes room
    data = base64.b64encode(b"#!/bin/sh\n").decode()
    assert daemon.call(["upload:chunk", first[2], "0", data]).ok
    assert daemon.call(["upload:end", first[2]]).ok
    assert daemon.call(["upload:status", second[2]]).data["missing"] == [0]
    assert begin("gamma")[0]
    assert daemon.call(["upload:abort", second[2]]).ok
    assert begin("alpha")[0]
