"""Every process berthd starts lives in a unit that ends whole: when berthd stops it, scales it down,
destroys its app, times a run out, when the program ends (a build's daemon), and when berthd is
SIGKILLed, whatever the processes under it did (fork, double fork, setsid, ignoring SIGTERM).
Each check runs with the C shim and with the Python one (berthd without a C compiler)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests import test_sources
from tests.daemon_proc import Berthd
from tests.test_native_runner import berthd_zombies, create, report, wait_for
from tests.test_sources import git, make_tar
from tests.users import NEEDS_ROOT, system_users

# The program and everything it starts record their pids, one a line: two plain children, two
# grandchildren whose parent left at once (orphans), two that called setsid and each has a child of its
# own, and one that ignores SIGTERM (so do the setsid ones). With `exit`, the program leaves once all
# are recorded; with `stubborn`, it ignores SIGTERM too.
FAMILY = r"""
import os, signal, sys, time
record, options = sys.argv[1], sys.argv[2:]

def note():
    with open(record, "a") as f:
        f.write(f"{os.getpid()}\n")

def linger(ignore_term=False):
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note()
    while True:
        time.sleep(1)

def child(body):
    if os.fork() == 0:
        try:
            body()
        finally:
            os._exit(0)

def double_fork():
    child(linger)
    os._exit(0)

def setsid_then_fork():
    os.setsid()
    child(lambda: linger(True))
    linger(True)

for _ in range(2):
    child(linger)
for _ in range(2):
    child(double_fork)
for _ in range(2):
    child(setsid_then_fork)
child(lambda: linger(True))
if "stubborn" in options:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
note()
while len(open(record).read().split()) < 10:
    time.sleep(0.02)
if "exit" in options:
    sys.exit(0)
while True:
    time.sleep(1)
"""
FAMILY_SIZE = 10
GONE_WITHIN = 2.0

http_root = test_sources.http_root  # the archive server, a fixture


@pytest.fixture(params=["C", "Python"])
def shim(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start_with(shim: str, start_berthd: Callable[..., Berthd], tmp_path: Path, **options: object) -> Berthd:
    """A berthd using the C shim, or the Python one (no C compiler on its PATH)."""
    env: dict[str, str] = {}
    if shim == "Python":
        no_compiler = tmp_path / "no-cc-bin"  # git only, for git:sync
        no_compiler.mkdir(exist_ok=True)
        (no_compiler / "git").symlink_to(str(shutil.which("git")))
        env["PATH"] = str(no_compiler)
    started = start_berthd(extra_args=["--stop-timeout", "1"], env=env, **options)
    wait_for(lambda: shim == "C" or f"through the {shim} shim" in started.log(), timeout=10)
    return started


@pytest.fixture
def daemon(start_berthd: Callable[..., Berthd], tmp_path: Path, shim: str) -> Berthd:
    return start_with(shim, start_berthd, tmp_path)


@pytest.fixture
def family(tmp_path: Path) -> tuple[Path, Path]:
    program = tmp_path / "family.py"
    program.write_text(f"#!{sys.executable}\n{FAMILY}")
    program.chmod(0o755)
    return program, tmp_path / "pids"


def recorded(record: Path) -> list[int]:
    wait_for(lambda: record.exists() and len(record.read_text().split()) >= FAMILY_SIZE)
    return [int(word) for word in record.read_text().split()]


def alive(pids: list[int]) -> list[int]:
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [pid for pid in pids if running(pid)]


def assert_all_gone(pids: list[int], daemon: Berthd | None = None) -> None:
    """None of `pids` alive by GONE_WITHIN from now (polled), and no zombie left under berthd."""
    deadline = time.monotonic() + GONE_WITHIN
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive(pids) == []
    if daemon is not None:
        wait_for(lambda: not berthd_zombies(daemon), timeout=GONE_WITHIN)


def start_family(daemon: Berthd, family: tuple[Path, Path], *options: str) -> list[int]:
    program, record = family
    create(daemon, "fam", program, "--", str(record), *options)
    assert daemon.call("ps:start fam").ok
    pids = recorded(record)
    assert len(alive(pids)) == FAMILY_SIZE
    return pids


def test_kill_9_of_berthd_ends_every_process_of_the_unit(daemon: Berthd, family: tuple[Path, Path]) -> None:
    pids = start_family(daemon, family)
    daemon.kill()
    assert_all_gone(pids)


def test_berthd_shutdown_ends_every_unit_and_its_restart_finds_nothing_left(
    daemon: Berthd, family: tuple[Path, Path]
) -> None:
    pids = start_family(daemon, family, "stubborn")
    assert daemon.stop(signal.SIGTERM) == 0  # SIGTERM to each unit, SIGKILL after the stop timeout
    assert_all_gone(pids)
    daemon.start()
    wait_for(lambda: report(daemon, "fam") and report(daemon, "fam")[0]["state"] == "RUNNING")
    assert alive(pids) == []
    assert daemon.call("ps:stop fam").ok


def test_ps_stop_ends_the_whole_unit_even_what_ignores_sigterm(
    daemon: Berthd, family: tuple[Path, Path]
) -> None:
    pids = start_family(daemon, family, "stubborn")
    started = time.monotonic()
    assert daemon.call("ps:stop fam").ok
    assert time.monotonic() - started < 1 + GONE_WITHIN  # the stop timeout, then SIGKILL to all of it
    assert_all_gone(pids, daemon)
    row = report(daemon, "fam")[0]
    assert (row["state"], row["last_exit"]) == ("STOPPED", "killed by SIGKILL")


def test_sigterm_reaches_every_process_of_the_unit(daemon: Berthd, family: tuple[Path, Path]) -> None:
    program, record = family
    create(daemon, "fam", "/bin/sh", "--", "-c", f"{program} {record} & sleep 1000 & wait")
    assert daemon.call("ps:start fam").ok
    pids = recorded(record)
    assert daemon.call("ps:stop fam").ok
    assert_all_gone(pids, daemon)


def test_apps_destroy_ends_the_whole_unit(daemon: Berthd, family: tuple[Path, Path]) -> None:
    pids = start_family(daemon, family)
    assert daemon.call("apps:destroy fam --force").ok
    assert_all_gone(pids, daemon)


def test_a_run_timed_out_ends_the_whole_unit(daemon: Berthd, family: tuple[Path, Path]) -> None:
    program, record = family
    create(daemon, "fam", program, "--", str(record))
    answer = daemon.call("run fam --timeout 3")
    assert answer.data["timed_out"] is True
    assert_all_gone([int(word) for word in record.read_text().split()], daemon)


def test_scale_to_zero_ends_the_units_of_a_procfile_app(
    daemon: Berthd, family: tuple[Path, Path], http_root: tuple[Path, str]
) -> None:
    program, record = family
    root, base = http_root
    # a Procfile line runs under /bin/sh -c, the family beneath it
    procfile = f"web: {sys.executable} family.py {record}\n".encode()
    make_tar(root / "app.tar.gz", {"Procfile": procfile, "family.py": program.read_bytes()})
    assert daemon.call("apps:create twelve").ok
    answer = daemon.call(["git:from-archive", "twelve", f"{base}/app.tar.gz"])
    assert answer.ok, answer.output
    assert daemon.call("ps:scale twelve web=1").ok
    assert daemon.call("ps:start twelve").ok
    pids = recorded(record)
    assert daemon.call("ps:scale twelve web=0").ok
    assert_all_gone(pids, daemon)
    assert report(daemon, "twelve") == []


def test_a_build_that_leaves_a_daemon_behind_leaves_nothing(
    daemon: Berthd, family: tuple[Path, Path], tmp_path: Path
) -> None:
    program, record = family
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "family.py").write_text(program.read_text())
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "v1")
    build = f"{sys.executable} family.py {record} exit"
    answer = daemon.call(["git:sync", "built", f"file://{repo}", "--build-cmd", build])
    assert answer.ok, answer.output  # the build's own status: exit 0
    assert_all_gone(recorded(record), daemon)


def test_the_exit_status_is_the_programs_own(daemon: Berthd) -> None:
    create(daemon, "seven", "/bin/sh", "--", "-c", "sleep 1000 & exit 7")
    answer = daemon.call("run seven")
    assert (answer.data["exit_code"], answer.data["signal"]) == (7, None)
    create(daemon, "shot", "/bin/sh", "--", "-c", "kill -USR1 $$")
    answer = daemon.call("run shot")
    assert (answer.data["exit_code"], answer.data["signal"]) == (None, signal.SIGUSR1)
    assert "Process killed by signal 10" in answer.output
    create(daemon, "fine", "/bin/sh", "--", "-c", "echo out; echo err >&2; read line; echo got $line")
    answer = daemon.call(["run", "fine", "--stdin", "typed"])
    folder = Path(answer.data["output_dir"])
    assert answer.data["exit_code"] == 0
    assert (folder / "stdout.txt").read_text() == "out\ngot typed\n"
    assert (folder / "stderr.txt").read_text() == "err\n"


def test_a_supervised_program_killed_by_a_signal_is_reported_so(daemon: Berthd) -> None:
    create(daemon, "segv", "/bin/sh", "--restart-policy", "no", "--", "-c", "kill -SEGV $$")
    assert daemon.call("ps:start segv").ok
    wait_for(lambda: report(daemon, "segv")[0]["state"] == "EXITED")
    row = report(daemon, "segv")[0]
    assert (row["last_exit_code"], row["last_exit"]) == (None, "killed by SIGSEGV")


def test_the_program_has_only_its_three_streams_and_leads_its_session(daemon: Berthd) -> None:
    create(daemon, "plain", "/bin/sleep", "--", "1000")
    assert daemon.call("ps:start plain").ok
    wait_for(lambda: report(daemon, "plain")[0]["state"] == "RUNNING")
    pid = int(str(report(daemon, "plain")[0]["pid"]))
    assert psutil.Process(pid).cmdline() == ["/bin/sleep", "1000"]
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    shim = psutil.Process(pid).parent()
    assert shim is not None and daemon.proc is not None and shim.ppid() == daemon.proc.pid
    assert daemon.call("ps:stop plain").ok


@NEEDS_ROOT
def test_a_user_process_cannot_kill_its_shim_and_its_unit_still_ends(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, shim: str
) -> None:
    daemon = start_with(shim, start_berthd, reachable_tmp, root=reachable_tmp)
    with system_users("bunit", extra_group=True) as (user,):
        naps = [f"{1000 + len(shim)}.{digit}" for digit in (7, 8)]  # no other test sleeps so long
        # absolute paths: the Python shim's berthd has a PATH of git alone, which its children inherit
        body = (
            'kill -KILL $PPID 2>/dev/null; echo "kill $? $(/usr/bin/id -u) $(/usr/bin/id -G)"; '
            f"/usr/bin/setsid /bin/sleep {naps[0]} & exec /bin/sleep {naps[1]}"
        )
        create(daemon, "walled", "/bin/sh", "--user", user.name, "--", "-c", body)
        answer = daemon.call("run walled --timeout 2")
        assert answer.data["timed_out"] is True  # the shim lived on, and ended the unit at the timeout
        line = (Path(answer.data["output_dir"]) / "stdout.txt").read_text().split()
        assert line[:3] == ["kill", "1", str(user.uid)]
        assert sorted(map(int, line[3:])) == sorted({user.gid, user.extra_gid or user.gid})
        sleepers = [["/bin/sleep", nap] for nap in naps]
        left = [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] in sleepers]
        assert alive(left) == []


def test_a_shim_killed_from_outside_still_takes_the_programs_group(daemon: Berthd) -> None:
    create(daemon, "orphaned", "/bin/sh", "--restart-policy", "no", "--", "-c", "/bin/sleep 1000.4 & wait")
    assert daemon.call("ps:start orphaned").ok
    wait_for(lambda: report(daemon, "orphaned")[0]["state"] == "RUNNING")
    pid = int(str(report(daemon, "orphaned")[0]["pid"]))
    wait_for(lambda: len(psutil.Process(pid).children()) == 1)
    sleeper = psutil.Process(pid).children()[0].pid
    shim = psutil.Process(pid).ppid()
    os.kill(shim, signal.SIGKILL)  # root's kill -9: the one way past the shim
    assert_all_gone([pid, sleeper], daemon)  # the program by its death signal, the rest by berthd


def test_the_program_gets_exactly_the_environment_berthd_gives_it(daemon: Berthd) -> None:
    """The Python shim's own environment gains LC_CTYPE at its start (PEP 538): the program's must not."""
    create(daemon, "env", "/usr/bin/env", "--", "-0")
    answer = daemon.call("run env")
    assert answer.data["exit_code"] == 0
    names = {
        entry.partition("=")[0]
        for entry in (Path(answer.data["output_dir"]) / "stdout.txt").read_text().split("\0")
    }
    assert ("LC_CTYPE" in names) == ("LC_CTYPE" in os.environ)
    assert "BERTH_JOB_ID" in names


HOPPER = r"""
import os, sys, time
# forks and leaves, again and again, so its pid keeps changing: a walk of the tree must catch it;
# every 100 hops it writes where it is
trail, ends_at, hops = sys.argv[1], time.time() + 20, 0
while time.time() < ends_at:
    if os.fork():
        os._exit(0)
    hops += 1
    if hops % 100 == 0:
        with open(trail + ".new", "w") as f:
            f.write(f"{os.getpid()} {hops}")
        os.replace(trail + ".new", trail)
"""


def test_a_process_that_keeps_forking_away_is_still_caught(daemon: Berthd, tmp_path: Path) -> None:
    hopper = tmp_path / "hopper.py"
    hopper.write_text(f"#!{sys.executable}\n{HOPPER}")
    hopper.chmod(0o755)
    trail = tmp_path / "trail"
    create(daemon, "hop", "/bin/sh", "--", "-c", f"{hopper} {trail} & /bin/sleep 1000")
    assert daemon.call("ps:start hop").ok
    wait_for(trail.exists)
    first = trail.read_text()
    wait_for(lambda: trail.read_text() != first)  # hopping
    started = time.monotonic()
    assert daemon.call("ps:stop hop").ok
    assert time.monotonic() - started < 1 + GONE_WITHIN
    last = trail.read_text()
    time.sleep(0.5)  # a hopper alive would have moved on by hundreds of hops
    assert trail.read_text() == last
    assert alive([int(last.split()[0])]) == []
    wait_for(lambda: not berthd_zombies(daemon), timeout=GONE_WITHIN)
