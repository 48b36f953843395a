"""The native runner with real processes: supervision, one-shot runs, logs, users, kill -9."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from berth.client import Client
from berth.messages import Response
from tests.daemon_proc import Berthd
from tests.wire import RawConnection


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def report(daemon: Berthd, app: str) -> list[dict[str, object]]:
    answer = daemon.call(f"ps:report {app}")
    assert answer.ok, answer.output
    return list(answer.data)


def state_of(daemon: Berthd, app: str, process: str = "main.1") -> str:
    rows = [r for r in report(daemon, app) if r["process"] == process]
    return str(rows[0]["state"]) if rows else "none"


def pid_of(daemon: Berthd, app: str, process: str = "main.1") -> int:
    rows = [r for r in report(daemon, app) if r["process"] == process and r["state"] == "RUNNING"]
    assert rows, report(daemon, app)
    return int(str(rows[0]["pid"]))


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def berthd_zombies(daemon: Berthd) -> list[psutil.Process]:
    assert daemon.proc is not None
    return [c for c in psutil.Process(daemon.proc.pid).children() if c.status() == psutil.STATUS_ZOMBIE]


def create(daemon: Berthd, app: str, executable: Path | str, *options: str) -> None:
    answer = daemon.call(["apps:from-local", app, str(executable), *options])
    assert answer.ok, answer.output


# supervision


def test_crashing_process_restarts_with_exponential_backoff(berthd: Berthd, tmp_path: Path) -> None:
    crash = script(tmp_path, "crash.sh", "#!/bin/sh\necho started\nexit 3\n")
    create(berthd, "crashy", crash)
    assert berthd.call("ps:start crashy").ok
    wait_for(lambda: int(str(report(berthd, "crashy")[0]["restarts"])) >= 3, timeout=20)
    berthd.call("ps:stop crashy")
    notes = [
        (_seconds(line["timestamp"]), str(line["text"]))
        for line in berthd.call("logs crashy --num 1000").data
        if line["stream"] == "berthd"
    ]
    # Each BACKOFF announces its wait (1, 2, 4 s, each +/- 10 %), and the next start comes no sooner.
    # Only a lower bound on the wait: a loaded machine can make it longer, never shorter.
    waits = []
    for (at, text), (next_at, next_text) in zip(notes, notes[1:], strict=False):
        found = re.search(r"restarting in ([0-9.]+) s$", text)
        if text.startswith("BACKOFF") and found and next_text == "STARTING":
            announced = float(found.group(1))
            assert next_at - at >= announced - 0.06, (announced, next_at - at)
            waits.append(announced)
    for announced, expected in zip(waits[:3], [1.0, 2.0, 4.0], strict=True):
        assert expected * 0.9 - 0.05 <= announced <= expected * 1.1 + 0.05, waits
    assert report(berthd, "crashy")[0]["last_exit_code"] == 3


def _seconds(timestamp: object) -> float:
    text = str(timestamp)
    return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + float(text[19:-1])


def test_on_failure_3_gives_up_and_reports_failed(berthd: Berthd, tmp_path: Path) -> None:
    crash = script(tmp_path, "crash.sh", "#!/bin/sh\nexit 1\n")
    create(berthd, "quitter", crash, "--restart-policy", "on-failure:3")
    berthd.call("ps:start quitter")
    wait_for(lambda: state_of(berthd, "quitter") == "FAILED", timeout=15)
    row = report(berthd, "quitter")[0]
    assert row["restarts"] == 2  # three runs in all
    assert row["last_exit_code"] == 1
    assert row["restart_policy"] == "on-failure:3"
    assert "FAILED" in berthd.call("ps:report").output


def test_on_failure_does_not_restart_a_clean_exit(berthd: Berthd, tmp_path: Path) -> None:
    done = script(tmp_path, "done.sh", "#!/bin/sh\nexit 0\n")
    create(berthd, "oneshot", done, "--restart-policy", "on-failure")
    berthd.call("ps:start oneshot")
    wait_for(lambda: state_of(berthd, "oneshot") == "EXITED")
    assert report(berthd, "oneshot")[0]["restarts"] == 0


def test_stop_escalates_to_sigkill_for_a_process_ignoring_sigterm(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd(extra_args=["--stop-timeout", "1"])
    stubborn = script(
        tmp_path,
        "stubborn.py",
        f"#!{sys.executable}\nimport signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\nwhile True:\n    time.sleep(0.1)\n",
    )
    create(daemon, "stubborn", stubborn)
    daemon.call("ps:start stubborn")
    wait_for(lambda: "ready" in daemon.call("logs stubborn").output)
    pid = pid_of(daemon, "stubborn")
    started = time.monotonic()
    assert daemon.call("ps:stop stubborn").ok
    took = time.monotonic() - started
    assert 0.9 <= took <= 5
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert report(daemon, "stubborn")[0]["last_exit"] == "killed by SIGKILL"


def test_stop_takes_the_grandchildren_too_and_leaves_no_zombies(berthd: Berthd) -> None:
    create(berthd, "family", "/bin/sh", "--", "-c", "sleep 1000 & wait")
    berthd.call("ps:start family")
    pid = pid_of(berthd, "family")
    wait_for(lambda: len(group_members(pid)) == 2)
    assert berthd.call("ps:stop family").ok
    assert group_members(pid) == []
    wait_for(lambda: not berthd_zombies(berthd), timeout=5)
    assert state_of(berthd, "family") == "STOPPED"


def test_stop_kills_a_grandchild_that_ignores_sigterm_once_its_leader_is_gone(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd(extra_args=["--stop-timeout", "1"])
    family = script(
        tmp_path,
        "family.py",
        f"#!{sys.executable}\nimport os, signal, time\nif os.fork() == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    print('ready', flush=True)\n"
        "    while True:\n        time.sleep(0.1)\ntime.sleep(1000)\n",
    )
    create(daemon, "family", family)
    daemon.call("ps:start family")
    wait_for(lambda: "ready" in daemon.call("logs family").output)
    pid = pid_of(daemon, "family")
    assert len(group_members(pid)) == 2
    started = time.monotonic()
    assert daemon.call("ps:stop family").ok
    assert time.monotonic() - started < 5  # what a leader leaves behind is killed when it exits
    assert group_members(pid) == []
    wait_for(lambda: not berthd_zombies(daemon), timeout=5)


def test_scale_names_processes_and_refuses_bad_counts(berthd: Berthd) -> None:
    create(berthd, "scaled", "/bin/sleep", "--", "1000")
    assert berthd.call("ps:scale scaled main=3").ok
    berthd.call("ps:start scaled")
    assert [r["process"] for r in report(berthd, "scaled")] == ["main.1", "main.2", "main.3"]
    assert {r["state"] for r in report(berthd, "scaled")} == {"RUNNING"}
    assert berthd.call("ps:scale scaled main=1").ok
    assert [r["process"] for r in report(berthd, "scaled")] == ["main.1"]
    bad = berthd.call("ps:scale scaled web=2")
    assert bad.error == "invalid_argument" and "unknown process type 'web'" in bad.output
    assert berthd.call("ps:scale scaled main=-1").error == "invalid_argument"
    assert berthd.call("ps:scale scaled main").error == "invalid_argument"
    berthd.call("ps:stop scaled")


def test_restart_gives_a_new_process(berthd: Berthd) -> None:
    create(berthd, "again", "/bin/sleep", "--", "1000")
    berthd.call("ps:start again")
    first = pid_of(berthd, "again")
    assert berthd.call("ps:restart again").ok
    second = pid_of(berthd, "again")
    assert first != second
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert berthd.call("ps:set again restart-policy on-failure:2").ok
    assert report(berthd, "again")[0]["restart_policy"] == "on-failure:2"
    assert berthd.call("ps:set again restart-policy sometimes").error == "invalid_argument"
    berthd.call("ps:stop again")


def test_destroy_stops_the_processes(berthd: Berthd) -> None:
    create(berthd, "doomed", "/bin/sh", "--", "-c", "sleep 1000 & wait")
    berthd.call("ps:start doomed")
    pid = pid_of(berthd, "doomed")
    assert berthd.call("apps:destroy doomed --force").ok
    assert group_members(pid) == []


# one-shot runs


def test_run_writes_output_files_with_their_modes(berthd: Berthd, tmp_path: Path) -> None:
    talker = script(tmp_path, "talk.sh", "#!/bin/sh\necho one\necho two >&2\necho three\n")
    create(berthd, "talker", talker)
    events: list[dict[str, object]] = []
    with Client(berthd.socket) as client:
        answer = client.call("run talker", on_event=events.append)
    assert answer.ok, answer.output
    data = answer.data
    assert data["exit_code"] == 0 and data["timed_out"] is False and data["duration_s"] >= 0
    folder = Path(data["output_dir"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o2750  # the app's group reads, others nothing
    files = {p.name: p for p in folder.iterdir()}
    assert set(files) == {"stdout.txt", "stderr.txt", "logs.txt"}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert files["stdout.txt"].read_text() == "one\nthree\n"
    assert files["stderr.txt"].read_text() == "two\n"
    assert sorted(files["logs.txt"].read_text().splitlines()) == ["one", "three", "two"]
    assert [(e["stream"], e["line"]) for e in events if e["event"] == "log"] in (
        [("stdout", "one"), ("stderr", "two"), ("stdout", "three")],
        [("stdout", "one"), ("stdout", "three"), ("stderr", "two")],
        [("stderr", "two"), ("stdout", "one"), ("stdout", "three")],
    )
    job = berthd.call(f"jobs:info {data['job_id']}")
    assert job.ok and job.data["exit_code"] == 0
    assert data["job_id"] in berthd.call("jobs:list talker").output


def test_run_timeout_kills_the_group(berthd: Berthd) -> None:
    create(berthd, "slow", "/bin/sh", "--", "-c", "sleep 1000.3 & sleep 1000.3")
    started = time.monotonic()
    answer = berthd.call("run slow --timeout 1")
    assert time.monotonic() - started < 5
    assert (answer.ok, answer.error) == (False, "timeout")
    assert "Process execution timed out" in answer.output
    assert answer.data["timed_out"] is True
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "1000.3"]]


def test_exit_127_is_reported_as_executable_not_found(berthd: Berthd, tmp_path: Path) -> None:
    missing = script(tmp_path, "missing.sh", "#!/bin/sh\nexec /nonexistent/program\n")
    create(berthd, "missing", missing)
    answer = berthd.call("run missing")
    assert answer.ok is False and answer.data["exit_code"] == 127
    assert "executable not found" in answer.output
    vanishing = script(tmp_path, "vanish.sh", "#!/bin/sh\necho hi\n")
    create(berthd, "vanish", vanishing)
    vanishing.unlink()
    answer = berthd.call("run vanish")
    assert answer.data["exit_code"] == 127 and "executable not found" in answer.output


def test_run_delivers_stdin_and_arguments_exactly(berthd: Berthd, tmp_path: Path) -> None:
    echo = script(
        tmp_path,
        "echo.py",
        f"#!{sys.executable}\nimport json, sys\nprint(json.dumps({{'argv': sys.argv[1:], 'stdin': sys.stdin.read()}}))\n",
    )
    create(berthd, "echo", echo)
    tricky = ["it's", 'say "hi"', "two\nlines", "back\\slash", "$HOME", "; rm -rf /", "  spaced  "]
    answer = berthd.call(["run", "echo", "--stdin", "hello\nworld", "--", *tricky])
    assert answer.ok, answer.output
    result = json.loads((Path(answer.data["output_dir"]) / "stdout.txt").read_text())
    assert result == {"argv": tricky, "stdin": "hello\nworld"}


def test_env_mounts_and_cwd_reach_the_process(berthd: Berthd, tmp_path: Path) -> None:
    show = script(
        tmp_path,
        "show.sh",
        '#!/bin/sh\necho "cwd=$(pwd)"\necho "greeting=$GREETING"\necho "in=$BERTH_INPUT_DIR"\n'
        'echo "out=$BERTH_OUTPUT_DIR"\necho result > "$BERTH_OUTPUT_DIR/result.txt"\n',
    )
    create(
        berthd, "mounted", show, "--env", "GREETING=hello world", "--mount", "/data/in:INPUT",
        "--mount", "/data/out:OUTPUT", "--cwd", str(tmp_path),
    )  # fmt: skip
    answer = berthd.call("run mounted")
    assert answer.ok, answer.output
    out = dict(
        line.split("=", 1)
        for line in (Path(answer.data["output_dir"]) / "stdout.txt").read_text().splitlines()
    )
    app_dir = berthd.data_dir / "apps" / "mounted"
    assert out["cwd"] == str(tmp_path)
    assert out["greeting"] == "hello world"
    assert out["in"] == str(app_dir / "mounts" / "data" / "in")
    assert (app_dir / "mounts" / "data" / "out" / "result.txt").read_text() == "result\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_an_unprivileged_user(start_berthd: Callable[..., Berthd], reachable_tmp: Path) -> None:
    berthd = start_berthd(root=reachable_tmp)  # the user enters the app's folder with its own rights
    user = "berthtest"
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", user], check=True)
    create(berthd, "whoami", "/bin/sh", "--user", user, "--", "-c", 'echo "$(id -un) $(id -u) $HOME $USER"')
    answer = berthd.call("run whoami")
    assert answer.ok, answer.output
    entry = pwd.getpwnam(user)
    text = (Path(answer.data["output_dir"]) / "stdout.txt").read_text().strip()
    assert text == f"{user} {entry.pw_uid} {entry.pw_dir} {user}"


def test_bad_from_local_input_is_refused_clearly(berthd: Berthd, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    plain.chmod(0o644)
    cases = [
        (["bin/true"], "must be absolute"),
        (["/nonexistent/true"], "no such file"),
        ([str(tmp_path)], "is a directory"),
        ([str(plain)], "permission denied"),
        (["/bin/true", "--user", "no-such-user-here"], "no user"),
        (["/bin/true", "--timeout", "0"], "at least 1 second"),
        (["/bin/true", "--timeout", "-5"], "at least 1 second"),
        (["/bin/true", "--restart-policy", "sometimes"], "on-failure"),
        (["/bin/true", "--require", "colour=blue"], "unknown requirement"),
    ]
    for args, message in cases:
        answer = berthd.call(["apps:from-local", "bad", *args])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), args
        assert message in answer.output, (args, answer.output)
    assert berthd.call("apps:list").data == []
    create(berthd, "good", "/bin/true")
    assert berthd.call("run good --timeout 0").error == "invalid_argument"
    assert berthd.call("run good --timeout -1").error == "invalid_argument"
    assert berthd.call("ps:start nothing-here").error == "not_found"


# logs


def test_logs_num_reads_the_tail(berthd: Berthd, tmp_path: Path) -> None:
    counter = script(
        tmp_path, "count.sh", "#!/bin/sh\nfor i in $(seq 1 5000); do echo line $i; done\nsleep 1000\n"
    )
    create(berthd, "counter", counter)
    berthd.call("ps:start counter")
    wait_for(lambda: "line 5000" in berthd.call("logs counter --num 1").output)
    lines = berthd.call("logs counter --num 3").data
    assert [(line["stream"], line["text"]) for line in lines] == [
        ("stdout", "line 4998"),
        ("stdout", "line 4999"),
        ("stdout", "line 5000"),
    ]
    assert berthd.call("logs counter --process web.1").error == "invalid_argument"
    berthd.call("ps:stop counter")


def test_logs_drop_a_carriage_return_before_each_newline_and_keep_a_last_partial_line(
    berthd: Berthd, tmp_path: Path
) -> None:
    writer = script(
        tmp_path,
        "crlf.sh",
        "#!/bin/sh\nprintf 'one\\r\\ntwo\\r\\r\\n\\rthree\\nfour\\r'\nprintf 'oops\\r\\n' >&2\n"
        "printf 'tail'\nexec sleep 1000\n",
    )
    create(berthd, "crlf", writer)
    berthd.call("ps:start crlf")
    wait_for(lambda: "oops" in berthd.call("logs crlf").output)
    berthd.call("ps:stop crlf")  # the partial last line is logged when the process ends
    lines = [(line["stream"], line["text"]) for line in berthd.call("logs crlf --num 100").data]
    stdout = [text for stream, text in lines if stream == "stdout"]
    assert stdout == ["one", "two\r", "\rthree", "four\rtail"]
    assert ("stderr", "oops") in lines


def follow_lines(daemon: Berthd, app: str, count: int, timeout: float = 120) -> tuple[list[str], int]:
    """Follow an app's logs until `count` stdout lines came; the lines and the lines reported missed."""
    got: list[str] = []
    missed = 0
    with Client(daemon.socket, timeout=timeout) as client:
        stream = client.stream(["logs", app, "--tail", "--num", "0"])
        for message in stream:
            assert not isinstance(message, Response), message
            missed += int(message.get("missed", 0))
            if message.get("stream") == "stdout":
                got.append(str(message["line"]))
                if len(got) + missed >= count:
                    break
    return got, missed


def test_logs_tail_gets_every_line_of_100000_in_order(berthd: Berthd, tmp_path: Path) -> None:
    writer = script(
        tmp_path,
        "writer.py",
        f"#!{sys.executable}\nimport sys, time\ntime.sleep(1)\n"
        "sys.stdout.writelines(f'line {i}\\n' for i in range(100000))\nsys.stdout.flush()\ntime.sleep(1000)\n",
    )
    create(berthd, "writer", writer)
    berthd.call("ps:start writer")
    got, missed = follow_lines(berthd, "writer", 100000)
    assert missed == 0
    assert got == [f"line {i}" for i in range(100000)]
    berthd.call("ps:stop writer")


def test_logs_tail_follows_across_rotations(start_berthd: Callable[..., Berthd], tmp_path: Path) -> None:
    daemon = start_berthd(extra_args=["--log-max-bytes", "20000", "--log-backups", "3"])
    writer = script(
        tmp_path,
        "writer.py",
        f"#!{sys.executable}\nimport time\ntime.sleep(1)\n"
        "for i in range(5000):\n    print(f'line {i}', flush=True)\n    time.sleep(0.0005)\ntime.sleep(1000)\n",
    )
    create(daemon, "rotating", writer)
    daemon.call("ps:start rotating")
    got, missed = follow_lines(daemon, "rotating", 5000)
    assert missed == 0
    assert got == [f"line {i}" for i in range(5000)]
    logs = sorted(p.name for p in (daemon.data_dir / "apps" / "rotating" / "logs").iterdir())
    assert logs == ["main.1.log", "main.1.log.1", "main.1.log.2", "main.1.log.3"]
    daemon.call("ps:stop rotating")


def test_a_follower_that_falls_behind_is_told_what_it_missed(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd(extra_args=["--log-max-bytes", "4096", "--log-backups", "1"])
    writer = script(
        tmp_path,
        "flood.py",
        f"#!{sys.executable}\nimport sys, time\ntime.sleep(1.5)\n"
        "sys.stdout.writelines(f'line {i:06d} ' + 'x' * 200 + '\\n' for i in range(50000))\nsys.stdout.flush()\n"
        "time.sleep(1000)\n",
    )
    create(daemon, "flood", writer)
    daemon.call("ps:start flood")
    with RawConnection(daemon.socket, timeout=60) as conn:
        conn.send(b"logs flood --tail --num 0\n")
        time.sleep(4)  # not reading: berthd's follower stalls on the full socket, the writer does not
        got: list[int] = []
        missed = 0
        while len(got) + missed < 50000:
            message = conn.read_message()
            assert "ok" not in message, message
            missed += int(message.get("missed", 0))
            if message.get("stream") == "stdout":
                got.append(int(str(message["line"]).split()[1]))
    assert missed > 0
    assert len(got) + missed == 50000
    assert got == sorted(got)
    assert state_of(daemon, "flood") == "RUNNING"  # the writer was never held up
    daemon.call("ps:stop flood")


# berthd's own life


def test_kill_9_leaves_no_child_and_restart_brings_the_app_back(berthd: Berthd) -> None:
    create(berthd, "survivor", "/bin/sleep", "--", "987.65")  # a duration no other test uses
    berthd.call("ps:scale survivor main=2")
    berthd.call("ps:start survivor")
    pids = [pid_of(berthd, "survivor", name) for name in ("main.1", "main.2")]
    berthd.kill()
    deadline = time.monotonic() + 2

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)
    berthd.start()
    wait_for(lambda: {r["state"] for r in report(berthd, "survivor")} == {"RUNNING"})
    new_pids = [pid_of(berthd, "survivor", name) for name in ("main.1", "main.2")]
    assert set(new_pids).isdisjoint(pids)
    sleepers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["/bin/sleep", "987.65"]]
    assert sorted(p.pid for p in sleepers if p.status() != psutil.STATUS_ZOMBIE) == sorted(new_pids)
    berthd.call("ps:stop survivor")


@pytest.mark.skipif(not shutil.which("cc"), reason="the exec helper needs a C compiler")
def test_children_are_started_through_the_exec_helper(berthd: Berthd) -> None:
    create(berthd, "quick", "/bin/sleep", "--", "1000")
    berthd.call("ps:start quick")
    pid = pid_of(berthd, "quick")
    assert psutil.Process(pid).cmdline() == ["/bin/sleep", "1000"]
    assert berthd.proc is not None
    fds = Path(f"/proc/{berthd.proc.pid}/fd")
    assert any("berthd-exec-helper" in os.readlink(fd) for fd in fds.iterdir())  # built, and kept
    assert sorted(int(fd.name) for fd in Path(f"/proc/{pid}/fd").iterdir()) == [0, 1, 2]  # no leak
    berthd.call("ps:stop quick")


def test_sigterm_stops_every_group_before_exiting(berthd: Berthd) -> None:
    create(berthd, "graceful", "/bin/sh", "--", "-c", "sleep 1000 & wait")
    berthd.call("ps:start graceful")
    pid = pid_of(berthd, "graceful")
    assert berthd.stop(signal.SIGTERM) == 0
    assert group_members(pid) == []
    berthd.start()
    wait_for(lambda: state_of(berthd, "graceful") == "RUNNING")  # it was meant to run: it runs again
    berthd.call("ps:stop graceful")
    berthd.stop()
    berthd.start()
    assert report(berthd, "graceful") == []  # stopped on purpose: stays stopped


def test_from_local_on_a_running_app_makes_the_new_executable_live(berthd: Berthd, tmp_path: Path) -> None:
    """Every source ends in the same pipeline: new code for an app that runs replaces its processes."""
    first = script(tmp_path, "first.sh", "#!/bin/sh\nexec sleep 300\n")
    second = script(tmp_path, "second.sh", "#!/bin/sh\necho second >&2\nexec sleep 301\n")
    assert berthd.call(["apps:from-local", "swap", str(first)]).ok
    assert berthd.call("apps:info swap").data["source_detail"]["status"] == "ready"
    assert berthd.call("ps:start swap").ok
    wait_for(lambda: state_of(berthd, "swap") == "RUNNING")
    old = pid_of(berthd, "swap")
    answer = berthd.call(["apps:from-local", "swap", str(second)])
    assert answer.ok, answer.output
    wait_for(lambda: state_of(berthd, "swap") == "RUNNING")
    new = pid_of(berthd, "swap")
    assert new != old
    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
    assert psutil.Process(new).cmdline()[-1] == "301"
    assert berthd.call("apps:info swap").data["source_detail"]["status"] == "running"
    assert berthd.call("ps:stop swap").ok
    assert berthd.call(["apps:from-local", "swap", str(first)]).ok
    assert report(berthd, "swap")[0]["state"] == "STOPPED"
