"""The audit log: one JSON line per command, with who asked, what (secrets redacted), the result and
how long it took; a private file that berthd never follows a link to, rotated by size; `audit:tail`
for root, following new lines across rotations; a full disk never fails a command.

Everything here drives a real berthd through its socket; the callers are root (the test) or real system
users made for the test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.daemon_proc import ROOT, Berthd
from tests.users import NEEDS_ROOT, User, system_users
from tests.wire import RawConnection

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SMALL_FILE = 1024  # the smallest --audit-log-max-bytes: a few lines a file


def audit_file(daemon: Berthd) -> Path:
    return daemon.data_dir / "audit.log"


def entries(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def all_entries(path: Path, backups: int) -> list[dict[str, Any]]:
    """Oldest first, over the rotated files and the current one."""
    found = []
    for index in range(backups, 0, -1):
        found += entries(path.with_name(f"{path.name}.{index}"))
    return found + entries(path)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def exchange(daemon: Berthd, *lines: bytes) -> list[dict[str, Any]]:
    """The final answers to `lines`, sent on one connection; blank lines get none."""
    answers = []
    with RawConnection(daemon.socket) as conn:
        for line in lines:
            conn.send(line + b"\n")
            if line.strip():
                while "ok" not in (message := conn.read_message()):
                    pass
                answers.append(message)
    return answers


def test_each_command_gives_one_line_with_caller_command_arguments_result_and_duration(
    start_berthd: Callable[..., Berthd],
) -> None:
    daemon = start_berthd(extra_args=["--max-line", "1024"])
    answers = exchange(
        daemon,
        b"ping",
        b"apps:create audited",
        b"   ",  # blank: no command, no line
        b'{"cmd": "apps:info", "args": {"app": "missing"}, "id": 7}',
        b"no:such-command with words",
        b"apps:set audited",
        b"{not json",
        b"apps:help",
        b"x" * 2000,
    )
    assert [a.get("error") for a in answers] == [
        None, None, "not_found", "invalid_command", "invalid_argument", "invalid_request", None, "line_too_long",
    ]  # fmt: skip
    logged = entries(audit_file(daemon))
    assert [(e["command"], e["args"], e["result"]) for e in logged] == [
        ("ping", [], "ok"),
        ("apps:create", ["audited"], "ok"),
        ("apps:info", ["app='missing'"], "not_found"),
        ("no:such-command", "<unknown command: not shown>", "invalid_command"),
        ("apps:set", "<not understood: not shown>", "invalid_argument"),
        ("<invalid request>", "<9 bytes, not shown>", "invalid_request"),
        ("apps:help", [], "ok"),
        ("<line too long>", "<not shown>", "line_too_long"),
    ]
    me = os.getpid()
    for entry in logged:
        assert set(entry) == {"time", "caller", "command", "args", "result", "duration_ms"}, entry
        assert TIME.match(entry["time"]), entry["time"]
        assert entry["caller"] == {
            "uid": 0, "gid": 0, "pid": me, "user": "root", "group": "root",
            "groups": entry["caller"]["groups"], "gids": entry["caller"]["gids"],
        }  # fmt: skip
        assert entry["caller"]["gids"][0] == 0 and entry["caller"]["groups"][0] == "root"
        assert isinstance(entry["duration_ms"], float) and 0 <= entry["duration_ms"] < 10_000
    times = [entry["time"] for entry in logged]
    assert times == sorted(times)
    assert daemon.log().count("cmd=") == len(logged)  # the same commands as the daemon log has


def test_no_secret_reaches_the_audit_file(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd()
    config_value, named_value, env_value, url_password, option_password, chunk_marker = (
        f"{stem}-{secrets.token_hex(6)}" for stem in ("CFG", "NAMED", "ENV", "URLPW", "OPTPW", "CHUNK")
    )
    assert daemon.call("apps:create keeper").ok
    assert daemon.call(["config:set", "keeper", f"TOKEN={config_value}"]).ok
    assert daemon.call("config:set", {"app": "keeper", "pairs": [f"OTHER={named_value}"]}).ok
    assert daemon.call(["apps:from-local", "keeper", "/bin/true", "--env", f"API_KEY={env_value}"]).ok
    began = daemon.call(["upload:begin", "keeper", "tool", "64", "1"])
    assert began.ok, began.output
    chunk = base64.b64encode(chunk_marker.encode().ljust(64, b"."))
    assert daemon.call(["upload:chunk", began.data["session_id"], "0", chunk.decode()]).ok
    cloned = daemon.call(["git:sync", "keeper", f"http://alice:{url_password}@127.0.0.1:1/r.git",
                          "--username", "alice", "--password", option_password])  # fmt: skip
    assert not cloned.ok
    fetched = daemon.call(["git:from-archive", "keeper", f"https://bob:{url_password}@127.0.0.1:1/a.tgz"])
    assert not fetched.ok
    raw = audit_file(daemon).read_bytes()
    for secret in (config_value, named_value, env_value, url_password, option_password, chunk.decode()):
        assert secret.encode() not in raw, secret
    shown: dict[str, list[Any]] = {}
    for entry in entries(audit_file(daemon)):
        shown.setdefault(entry["command"], []).append(entry["args"])
    assert shown["config:set"] == [["keeper", "TOKEN=***"], ["app='keeper'", "pairs=['OTHER=***']"]]
    assert "--env=API_KEY=***" in shown["apps:from-local"][0]
    assert shown["upload:chunk"][0][-1] == "***"
    assert {"http://***@127.0.0.1:1/r.git", "--password=***"} <= set(shown["git:sync"][0])
    assert shown["git:from-archive"] == [["keeper", "https://***@127.0.0.1:1/a.tgz"]]


def test_the_audit_file_is_0600_from_its_first_line_on_and_after_each_rotation(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd(extra_args=["--audit-log-max-bytes", str(SMALL_FILE), "--audit-log-backups", "2"])
    assert daemon.call("ping").ok
    path = audit_file(daemon)
    assert mode_of(path) == 0o600 and os.stat(path).st_uid == os.geteuid()
    assert len(entries(path)) == 1
    for _ in range(20):
        assert daemon.call("ping").ok
    for name in ("audit.log", "audit.log.1", "audit.log.2"):
        assert mode_of(daemon.data_dir / name) == 0o600, name
    # a file an older berthd (or a hand) left open to others is narrowed before berthd writes to it
    daemon.stop()
    path.chmod(0o644)
    restarted = start_berthd()
    assert mode_of(path) == 0o600
    assert restarted.call("ping").ok


def test_a_link_at_the_audit_path_is_refused_not_followed(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not berthd's\n")
    target.chmod(0o644)
    missing = tmp_path / "would-be-created"
    for name, points_to in (("to-a-file", target), ("dangling", missing)):
        workdir = tmp_path / name
        (workdir / "data").mkdir(parents=True, mode=0o700)
        (workdir / "data" / "audit.log").symlink_to(points_to)
        with pytest.raises(RuntimeError, match="is a symbolic link: refused"):
            start_berthd(name)
        assert not (workdir / "run" / "berthd.sock").exists()  # refused before the socket existed
    assert target.read_text() == "not berthd's\n" and mode_of(target) == 0o644
    assert not missing.exists()


@NEEDS_ROOT
def test_a_file_at_the_audit_path_that_is_not_berthds_own_is_refused(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("a file berthd must not append to\n")

    def plant(name: str, make: Callable[[Path], object]) -> Path:
        (tmp_path / name / "data").mkdir(parents=True, mode=0o700)
        path = tmp_path / name / "data" / "audit.log"
        make(path)
        return path

    plant("fifo", os.mkfifo)
    plant("hard-link", lambda path: os.link(victim, path))
    owned = plant("someone-elses", lambda path: path.write_text(""))
    os.chown(owned, 65534, 65534)  # nobody's
    for name, why in (
        ("fifo", "not a regular file"),
        ("hard-link", "2 names"),
        ("someone-elses", "belongs to uid 65534"),
    ):
        with pytest.raises(RuntimeError, match=why):
            start_berthd(name)
    assert victim.read_text() == "a file berthd must not append to\n"


def test_rotation_by_size_keeps_the_configured_number_of_backups(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--audit-log-max-bytes", str(SMALL_FILE), "--audit-log-backups", "2"])
    for index in range(40):
        assert daemon.call(f"apps:info n{index}").error == "not_found"
    names = sorted(p.name for p in daemon.data_dir.glob("audit.log*"))
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in names[1:]:
        size = (daemon.data_dir / name).stat().st_size
        assert SMALL_FILE <= size < SMALL_FILE + 400, (name, size)  # rotated at the size, after a whole line
    kept = [entry["args"][0] for entry in all_entries(audit_file(daemon), 2)]
    assert kept == [f"n{index}" for index in range(40 - len(kept), 40)]  # the newest, in order, none twice
    assert 6 <= len(kept) < 40


def test_audit_tail_shows_the_last_lines_across_rotated_files(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--audit-log-max-bytes", str(SMALL_FILE), "--audit-log-backups", "3"])
    for index in range(12):
        daemon.call(f"apps:info t{index}")
    last3 = daemon.call("audit:tail --num 3")
    assert last3.ok, last3.output
    assert [entry["args"] for entry in last3.data] == [["t9"], ["t10"], ["t11"]]
    assert [json.loads(line) for line in last3.output.splitlines()] == last3.data
    assert len(entries(audit_file(daemon))) < 10  # so the next answer reads the rotated files too
    spanning = daemon.call(["audit:tail", "--num", "10"])
    assert [(e["command"], e["args"]) for e in spanning.data] == [
        *(("apps:info", [f"t{index}"]) for index in range(3, 12)),
        ("audit:tail", ["--num=3"]),
    ]
    assert len(daemon.call("audit:tail").data) == 14  # the default is 20: all there is
    assert daemon.call("audit:tail --num 10001").error == "invalid_argument"
    assert daemon.call("audit:tail --num 0").data == []


def follow_events(conn: RawConnection, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < count:
        message = conn.read_message()
        assert "ok" not in message, message
        assert message["event"] == "audit", message
        events.append(message["entry"])
    return events


def test_follow_streams_other_connections_lines_across_rotations(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--audit-log-max-bytes", str(SMALL_FILE), "--audit-log-backups", "1"])
    assert daemon.call("ping").ok
    with RawConnection(daemon.socket, timeout=20) as follower:
        follower.send(b"audit:tail --num 1 --follow\n")
        assert [e["command"] for e in follow_events(follower, 1)] == ["ping"]  # the last line, then new ones
        with RawConnection(daemon.socket) as other:
            for index in range(15):  # ~230 bytes a line: three rotations and more
                assert other.request(f"apps:info f{index}".encode())["error"] == "not_found"
        followed = follow_events(follower, 15)
        assert [e["args"] for e in followed] == [[f"f{index}"] for index in range(15)]
        assert {e["caller"]["pid"] for e in followed} == {os.getpid()}
        assert (daemon.data_dir / "audit.log.1").exists()
    # the follower left: its command ends, and is audited in turn
    deadline = time.monotonic() + 10
    while not any(e["command"] == "audit:tail" for e in all_entries(audit_file(daemon), 1)):
        assert time.monotonic() < deadline, "audit:tail --follow did not end when its client left"
        time.sleep(0.1)
    assert daemon.call("ping").ok


def test_a_follower_ends_with_its_answer_when_berthd_stops(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd()
    assert daemon.call("ping").ok
    with RawConnection(daemon.socket, timeout=20) as follower:
        follower.send(b"audit:tail --num 1 --follow\n")
        follow_events(follower, 1)
        started = time.monotonic()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        answer = follower.read_message()
        assert answer == {"ok": True, "output": "end of the audit log (berthd is stopping)"}
        assert daemon.stop() == 0
        assert time.monotonic() - started < 10  # not held until the 30 s shutdown grace


def test_the_audit_log_can_be_moved_by_config_or_environment_or_turned_off(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    config = tmp_path / "conf" / "berthd.toml"
    config.parent.mkdir()
    config.write_text('audit_log = "audit/berthd-audit.log"\n')  # relative: from the file's folder
    by_file = start_berthd("by-file", extra_args=["--config", str(config)])
    assert by_file.call("ping").ok
    assert [e["command"] for e in entries(tmp_path / "conf" / "audit" / "berthd-audit.log")] == ["ping"]
    assert not audit_file(by_file).exists()
    elsewhere = tmp_path / "env-audit.log"
    by_env = start_berthd("by-env", env={"BERTHD_AUDIT_LOG": str(elsewhere)})
    assert by_env.call("version").ok
    assert [e["command"] for e in entries(elsewhere)] == ["version"]
    off = start_berthd("off", extra_args=["--audit-log", "off"])
    assert off.call("ping").ok
    refused = off.call("audit:tail")
    assert (refused.ok, refused.error) == (False, "unavailable")
    assert not list(off.data_dir.glob("audit*")) and not (ROOT / "off").exists()


@pytest.fixture
def shared_berthd() -> Iterator[Berthd]:
    """berthd as root on a socket every local user may reach (0666, in a world-searchable folder)."""
    workdir = Path(tempfile.mkdtemp(prefix="berth-audit-"))
    workdir.chmod(0o755)
    (workdir / "run").mkdir(mode=0o755)
    daemon = Berthd(workdir, extra_args=["--socket-mode", "0666"]).start()
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def call_as(user: User, daemon: Berthd, command: str, args: list[str]) -> dict[str, Any]:
    line = json.dumps({"cmd": command, "args": args}) + "\n"
    out = subprocess.run(
        ["setpriv", f"--reuid={user.name}", f"--regid={user.gid}", "--init-groups",
         "socat", "-t", "10", "-", f"UNIX-CONNECT:{daemon.socket}"],
        input=line.encode(), capture_output=True, timeout=30,
    )  # fmt: skip
    answer = json.loads(out.stdout.splitlines()[-1])
    assert isinstance(answer, dict), out
    return answer


@NEEDS_ROOT
def test_audit_tail_is_for_root_only_and_other_users_are_audited_by_name(shared_berthd: Berthd) -> None:
    with system_users("audu", extra_group=True) as (user,):
        refused = call_as(user, shared_berthd, "audit:tail", ["--num", "5"])
        assert (refused["ok"], refused["error"]) == (False, "forbidden"), refused
        assert "root" in refused["output"] and "data" not in refused
        followed = call_as(user, shared_berthd, "audit:tail", ["--follow"])
        assert followed["error"] == "forbidden"
        assert call_as(user, shared_berthd, "ping", [])["ok"]
        theirs = [e for e in entries(audit_file(shared_berthd)) if e["caller"]["uid"] == user.uid]
        assert [(e["command"], e["result"]) for e in theirs] == [
            ("audit:tail", "forbidden"), ("audit:tail", "forbidden"), ("ping", "ok"),
        ]  # fmt: skip
        caller = theirs[-1]["caller"]
        assert (caller["user"], caller["gid"], caller["group"]) == (user.name, user.gid, user.name)
        assert caller["gids"] == [user.gid, user.extra_gid] and caller["groups"] == [
            user.name,
            f"{user.name}x",
        ]
        assert caller["pid"] > 0


@NEEDS_ROOT
def test_a_full_disk_costs_audit_lines_never_commands(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    disk = tmp_path / "tiny"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(disk)], check=True)
    daemon: Berthd | None = None
    try:
        daemon = start_berthd(extra_args=["--audit-log", str(disk / "audit.log")])
        assert daemon.call("ping").ok
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as fill, pytest.raises(OSError, match="No space left"):
            while True:
                fill.write(b"\0" * 4096)
        answers = [daemon.call(f"apps:info full{index}") for index in range(40)]  # a few fill the last page
        assert [a.error for a in answers] == ["not_found"] * 40
        assert daemon.log().count("cannot write the audit log") == 1
        filler.unlink()
        assert daemon.call("version").ok
        assert re.search(r"audit log .* is written again; \d+ lines were lost", daemon.log())
        logged = entries(disk / "audit.log")  # every line whole: a short write left no piece behind
        assert logged[0]["command"] == "ping" and logged[-1]["command"] == "version"
        assert 1 < len(logged) < 42
    finally:
        if daemon is not None:
            daemon.stop()  # it holds the file open: first, so that the tmpfs can go
        subprocess.run(["umount", str(disk)], check=False)


def test_a_follower_that_reads_nothing_is_let_go_without_an_internal_error(
    start_berthd: Callable[..., Berthd],
) -> None:
    daemon = start_berthd(extra_args=["--idle-timeout", "1"])
    with RawConnection(daemon.socket) as follower:
        follower.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        follower.send(b"audit:tail --num 0 --follow\n")
        time.sleep(0.5)
        with RawConnection(daemon.socket) as other:
            other.send(b"version\n" * 3000)  # far more audit events than the follower's socket holds
            for _ in range(3000):
                assert other.read_message()["ok"]
        deadline = time.monotonic() + 15
        while not any(e["command"] == "audit:tail" for e in entries(audit_file(daemon))):
            assert time.monotonic() < deadline, "the follower was not let go"
            time.sleep(0.2)
    (ended,) = [e for e in entries(audit_file(daemon)) if e["command"] == "audit:tail"]
    assert ended["result"] == "ok", ended
    assert "Traceback" not in daemon.log()
    assert daemon.call("ping").ok


@NEEDS_ROOT
def test_a_line_the_access_rules_decided_names_the_rule(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, tmp_path: Path
) -> None:
    with system_users("audr") as (user,):
        config = tmp_path / "rules.toml"
        config.write_text(f"""
[[access.rule]]
name = "no destroying"
users = ["{user.name}"]
commands = ["apps:destroy"]
deny = true

[[access.rule]]
name = "pinging"
users = ["{user.name}"]
commands = ["ping"]
""")
        config.chmod(0o644)
        daemon = start_berthd(
            root=reachable_tmp, extra_args=["--config", str(config), "--socket-mode", "0666"]
        )
        assert call_as(user, daemon, "ping", [])["ok"]
        assert call_as(user, daemon, "apps:destroy", ["someapp", "--force"])["error"] == "forbidden"
        assert call_as(user, daemon, "version", [])["error"] == "forbidden"  # no rule allows it
        assert daemon.call("version").ok  # root: no rule judges it
        logged = [(e["command"], e["args"], e["result"], e.get("rule")) for e in entries(audit_file(daemon))]
        assert logged == [
            ("ping", [], "ok", f"rule 2 'pinging' (line 8 of {config})"),
            (
                "apps:destroy",
                ["--force", "someapp"],
                "forbidden",
                f"rule 1 'no destroying' (line 2 of {config})",
            ),
            ("version", [], "forbidden", None),
            ("version", [], "ok", None),
        ]
        assert all("rule" not in e for e in entries(audit_file(daemon))[2:])  # no rule: no key, not null


def test_the_documented_line_has_the_fields_of_a_real_one(start_berthd: Callable[..., Berthd]) -> None:
    text = (ROOT / "docs" / "access.md").read_text().split("## The audit log", 1)[1]
    documented = json.loads(next(line for line in text.splitlines() if line.startswith("    {"))[4:])
    daemon = start_berthd()
    assert daemon.call("ping").ok
    (real,) = entries(audit_file(daemon))
    assert set(documented) == {*real, "rule"}  # root's command: no rule judged it
    assert set(documented["caller"]) == set(real["caller"])
    assert TIME.match(documented["time"])


def test_a_follower_behind_by_several_rotations_reads_every_file_still_kept(
    start_berthd: Callable[..., Berthd],
) -> None:
    daemon = start_berthd(extra_args=["--audit-log-max-bytes", str(SMALL_FILE), "--audit-log-backups", "4"])
    with RawConnection(daemon.socket, timeout=30) as follower:
        follower.send(b"audit:tail --num 0 --follow\n")
        time.sleep(0.5)
        with RawConnection(daemon.socket) as other:  # while the follower reads nothing: it falls behind
            other.send(b"".join(f"apps:info b{index}\n".encode() for index in range(1500)))
            for _ in range(1500):
                assert other.read_message()["error"] == "not_found"
        kept = [entry["args"][0] for entry in all_entries(audit_file(daemon), 4)]
        assert len(kept) > 10 and kept[-1] == "b1499"
        received: list[str] = []
        while not received or received[-1] != "b1499":
            received += [entry["args"][0] for entry in follow_events(follower, 1)]
    numbers = [int(name[1:]) for name in received]
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert set(kept) <= set(received), sorted(set(kept) - set(received))


def line_within(stream: IO[bytes], seconds: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], seconds)
    assert ready, f"no line within {seconds} s"
    return stream.readline()


def test_berth_prints_each_followed_line_as_the_file_holds_it(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd()
    assert daemon.call("ping").ok
    berth = Path(sys.executable).with_name("berth")
    command = [str(berth), "--socket", str(daemon.socket), "audit:tail", "--num", "1", "--follow"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as client:
        try:
            assert client.stdout is not None
            first = line_within(client.stdout, 20)
            assert daemon.call("version").ok
            second = line_within(client.stdout, 20)
        finally:
            client.terminate()
    assert [first, second] == audit_file(daemon).read_bytes().splitlines(keepends=True)
