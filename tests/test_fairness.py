"""Fairness between callers: one token bucket of commands per uid, shared by all its connections.

The callers are real processes connecting through the socket as uids other than root (4242, 4343: no
account needed, SO_PEERCRED reports the number), each an `Agent` started by root with its uid changed.
Rates are low (a few a second) so that the tests are quick and a slow machine cannot return a token
before a check; nothing is asserted on speed, only on what each caller is answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.client import Client
from berth.upload import upload_file
from berthd.config import Config, ConfigError, load_config
from berthd.main import build_parser
from berthd.server.fairness import CommandRates
from tests.daemon_proc import Berthd

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="connecting as other uids needs root")
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"  # our venv's may be root's only
FLOODER, OTHER = 4242, 4343
PONG = {"ok": True, "output": "pong"}
BUSY = re.compile(
    r"Too many commands from uid (\d+) \(limit ([\d.]+) a second, burst (\d+)\): try again in (\d+\.\d\d) s"
)

# An agent holding connections for one uid: one command a line on stdin, one JSON answer a line on stdout.
#   connect N          open N more connections (numbered from 0 in the order opened)
#   send I TEXT        send TEXT (a JSON string: lines, newlines included) on connection I at once
#   read I K           the next K answers on connection I, each [monotonic time, answer] ("closed" if none)
#   close I            close connection I
AGENT = r"""
import json, socket, sys, time
path, conns = sys.argv[1], []

def read_line(conn):
    sock, buffer = conn
    while b"\n" not in buffer[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return "closed"
        buffer[0] += chunk
    line, _, buffer[0] = buffer[0].partition(b"\n")
    return json.loads(line)

for command in sys.stdin:
    verb, _, rest = command.strip().partition(" ")
    if verb == "connect":
        for _ in range(int(rest)):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(30)
            sock.connect(path)
            conns.append((sock, [b""]))
        print(json.dumps(len(conns)), flush=True)
    elif verb == "send":
        index, _, text = rest.partition(" ")
        conns[int(index)][0].sendall(json.loads(text).encode())
        print(json.dumps("sent"), flush=True)
    elif verb == "read":
        index, count = map(int, rest.split())
        print(json.dumps([[time.monotonic(), read_line(conns[index])] for _ in range(count)]), flush=True)
    elif verb == "close":
        conns[int(rest)][0].close()
        print(json.dumps("closed"), flush=True)
"""


class Agent:
    """A process running as `uid` (no account needed) that holds connections to berthd."""

    def __init__(self, uid: int, socket_path: Path) -> None:
        self.uid = uid
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", AGENT, str(socket_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, user=uid, group=uid, extra_groups=[],
            cwd="/", text=True,
        )  # fmt: skip

    def command(self, line: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"the agent of uid {self.uid} died (exit {self.proc.wait()})"
        return json.loads(answer)

    def connect(self, count: int = 1) -> None:
        self.command(f"connect {count}")

    def send(self, index: int, text: str) -> None:
        self.command(f"send {index} {json.dumps(text)}")

    def read(self, index: int, count: int) -> list[tuple[float, dict[str, Any]]]:
        return [(at, answer) for at, answer in self.command(f"read {index} {count}")]

    def answers(self, index: int, text: str) -> list[dict[str, Any]]:
        """Send the lines of `text` at once on connection `index`; the answer to each that is not blank."""
        self.send(index, text)
        expected = sum(1 for line in text.split("\n") if line.strip())
        return [answer for _, answer in self.read(index, expected)]

    def ask(self, index: int, line: str) -> dict[str, Any]:
        (answer,) = self.answers(index, line + "\n")
        return answer

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def agents() -> Iterator[Callable[[int, Path], Agent]]:
    """Start agents (killed at the end of the test): `agents(uid, socket_path)`."""
    with contextlib.ExitStack() as stack:
        yield lambda uid, socket_path: stack.enter_context(Agent(uid, socket_path))


@pytest.fixture
def limited_berthd(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path
) -> Callable[[float, int], Berthd]:
    """A berthd whose socket any uid may open, with `rate` commands a second and bursts of `burst` per uid."""

    def start(rate: float, burst: int) -> Berthd:
        options = ["--socket-mode", "0666"]
        options += ["--commands-per-second-per-uid", str(rate), "--command-burst-per-uid", str(burst)]
        return start_berthd(root=reachable_tmp, extra_args=options)

    return start


def ping_lines(prefix: str, count: int) -> str:
    return "".join(json.dumps({"cmd": "ping", "id": f"{prefix}-{i}"}) + "\n" for i in range(count))


def busy_wait(answer: dict[str, Any], uid: int, rate: str, burst: int) -> float:
    """The answer is the busy refusal of `uid` over `rate` and `burst`: the seconds it says to wait."""
    assert (answer["ok"], answer.get("error")) == (False, "busy"), answer
    assert "data" not in answer, answer
    found = BUSY.fullmatch(answer["output"])
    assert found is not None, answer
    assert found.group(1, 2, 3) == (str(uid), rate, str(burst)), answer
    return float(found.group(4))


@NEEDS_ROOT
def test_a_uid_flooding_commands_is_told_busy_while_another_uid_and_root_are_served(
    limited_berthd: Callable[[float, int], Berthd], agents: Callable[[int, Path], Agent]
) -> None:
    daemon = limited_berthd(5, 5)
    flooder, other = agents(FLOODER, daemon.socket), agents(OTHER, daemon.socket)
    flooder.connect(3)
    other.connect()
    lines_each = 8
    for index in range(3):
        flooder.send(index, ping_lines(f"c{index}", lines_each))
    # the flooder's answers come in the order it asked, each with its id; at first its burst is served
    answers = flooder.read(0, 1)
    while answers[-1][1]["ok"] and len(answers) < lines_each:
        answers += flooder.read(0, 1)
    first_busy_at, refusal = answers[-1]
    busy_wait(refusal, FLOODER, "5", 5)
    # at this moment the flooder is over its bound, with more lines waiting: the others are served
    other_began = time.monotonic()
    assert other.answers(0, ping_lines("o", 4)) == [{**PONG, "id": f"o-{i}"} for i in range(4)]
    with daemon.client() as root:
        assert all(root.call("ping").output == "pong" for _ in range(20))  # root's are never counted
    other_ended = time.monotonic()
    # every line of the flooder is answered, in order, each with its id: its bound's worth of pongs, busy
    # for the rest (and berthd kept answering it at its rate, not at the speed it sent)
    answers += flooder.read(0, lines_each - len(answers))
    flood = {0: answers, 1: flooder.read(1, lines_each), 2: flooder.read(2, lines_each)}
    busy_times = []
    for index, timed in flood.items():
        assert [answer["id"] for _, answer in timed] == [f"c{index}-{i}" for i in range(lines_each)]
        for at, answer in timed:
            if answer["ok"]:
                assert answer == {**PONG, "id": answer["id"]}
            else:
                assert 0 < busy_wait(answer, FLOODER, "5", 5) <= 3 / 5  # its turn among its 3 connections
                busy_times.append(at)
    assert first_busy_at < other_began and max(busy_times) > other_ended, "the others were served meanwhile"
    served = sum(answer["ok"] for timed in flood.values() for _, answer in timed)
    lasted = max(at for timed in flood.values() for at, _ in timed) - first_busy_at
    assert 5 <= served <= 5 + 5 * lasted + 3
    # a refused connection is read again at its turn, when a token is back for it: the flood cost berthd
    # one refusal per token it got past its burst, and the first refusal of each connection
    assert len(busy_times) <= (served - 5) + 3
    assert daemon.call("ping").ok


@NEEDS_ROOT
def test_tokens_come_back_over_time_up_to_the_burst(
    limited_berthd: Callable[[float, int], Berthd], agents: Callable[[int, Path], Agent]
) -> None:
    daemon = limited_berthd(5, 5)
    caller = agents(FLOODER, daemon.socket)
    caller.connect()
    # blank lines are no commands: they take nothing
    assert caller.answers(0, "\n" * 20 + " \t\n" + ping_lines("a", 5)) == [
        {**PONG, "id": f"a-{i}"} for i in range(5)
    ]
    wait = busy_wait(caller.ask(0, '{"cmd": "apps:list", "id": 7}'), FLOODER, "5", 5)
    assert 0 < wait <= 1 / 5
    time.sleep(wait)
    assert caller.ask(0, "ping") == PONG
    # a second is a whole burst again, and waiting longer gives no more than the burst
    time.sleep(2.0)
    again = caller.answers(0, ping_lines("b", 6))
    assert again[:5] == [{**PONG, "id": f"b-{i}"} for i in range(5)]
    assert again[5]["id"] == "b-5"
    busy_wait(again[5], FLOODER, "5", 5)


@NEEDS_ROOT
def test_the_bucket_is_the_uids_across_its_connections_and_processes(
    limited_berthd: Callable[[float, int], Berthd], agents: Callable[[int, Path], Agent]
) -> None:
    daemon = limited_berthd(0.2, 5)  # a token every 5 s: none comes back during the test
    first, second = agents(FLOODER, daemon.socket), agents(FLOODER, daemon.socket)
    first.connect()
    second.connect()
    assert first.answers(0, ping_lines("f", 3)) == [{**PONG, "id": f"f-{i}"} for i in range(3)]
    assert second.answers(0, ping_lines("s", 2)) == [{**PONG, "id": f"s-{i}"} for i in range(2)]
    busy_wait(second.ask(0, "ping"), FLOODER, "0.2", 5)
    busy_wait(first.ask(0, "ping"), FLOODER, "0.2", 5)
    # nor does a new connection start afresh: the bucket outlives the uid's last connection until it is full
    first.command("close 0")
    second.command("close 0")
    first.connect()
    busy_wait(first.ask(1, "ping"), FLOODER, "0.2", 5)
    # another uid has its own
    other = agents(OTHER, daemon.socket)
    other.connect()
    assert other.answers(0, ping_lines("o", 5)) == [{**PONG, "id": f"o-{i}"} for i in range(5)]


@NEEDS_ROOT
def test_a_line_of_any_kind_over_the_bound_is_not_run_and_is_answered_busy(
    limited_berthd: Callable[[float, int], Berthd], agents: Callable[[int, Path], Agent]
) -> None:
    daemon = limited_berthd(0.2, 2)
    caller = agents(FLOODER, daemon.socket)
    caller.connect()
    assert caller.answers(0, "ping\nping\n") == [PONG, PONG]
    # a state change, an unknown command, a malformed request, a JSON one: none is run or looked at
    lines = ["apps:create intruder", "no:such-command", "{not json", '{"cmd": "ps:report", "id": "r"}']
    caller.connect(len(lines))
    for index, line in enumerate(lines, start=1):
        refusal = caller.ask(index, line)
        busy_wait(refusal, FLOODER, "0.2", 2)
        assert refusal.get("id") == ("r" if '"id"' in line else None)
    assert daemon.call("apps:list").data == []
    assert f"uid={FLOODER}" in daemon.log() and '"error":"busy"' in daemon.log()


def test_the_bucket_allows_the_burst_then_one_command_each_token(tmp_path: Path) -> None:
    rates = CommandRates(Config(commands_per_second_per_uid=10.0, command_burst_per_uid=3))
    assert [rates.take(7, 100.0) for _ in range(3)] == [None, None, None]
    assert rates.take(7, 100.0) == pytest.approx(0.1)
    assert rates.take(7, 100.05) is not None
    assert rates.take(7, 100.2) is None
    assert rates.take(8, 100.2) is None  # another uid: its own bucket
    assert all(rates.take(0, 100.2) is None for _ in range(1000))  # root is never limited


def test_callers_refused_at_once_are_given_turns_one_token_apart() -> None:
    rates = CommandRates(Config(commands_per_second_per_uid=10.0, command_burst_per_uid=1))
    assert rates.take(7, 50.0) is None
    waits = [rates.take(7, 50.0) for _ in range(4)]
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # the turns come in order, one token each: the first in line is served when its turn comes
    assert rates.take(7, 50.1) is None
    assert rates.take(7, 50.1) == pytest.approx(0.4)  # behind the three still waiting


def test_the_bucket_of_a_uid_with_no_connection_goes_once_it_is_full_again() -> None:
    rates = CommandRates(Config(commands_per_second_per_uid=10.0, command_burst_per_uid=5))
    for uid in range(1, 101):
        rates.take(uid, 10.0)
    rates.forget(1, 10.0)
    assert 1 in rates  # not full yet: reconnecting would not start afresh
    rates.forget(2, 11.0)  # a second later every bucket is full: the leaving ones are dropped
    assert 1 not in rates and 2 not in rates
    assert 3 in rates  # still connected
    for uid in range(3, 101):
        rates.forget(uid, 12.0)
    assert len(rates) == 0


def test_the_bounds_come_from_the_flags_over_the_environment_over_the_defaults() -> None:
    defaults = load_config(None, {}, {})
    assert (defaults.commands_per_second_per_uid, defaults.command_burst_per_uid) == (100.0, 200)
    environ = {"BERTHD_COMMANDS_PER_SECOND_PER_UID": "7.5", "BERTHD_COMMAND_BURST_PER_UID": "9"}
    from_environment = load_config(None, environ, {})
    assert (from_environment.commands_per_second_per_uid, from_environment.command_burst_per_uid) == (7.5, 9)
    args = vars(
        build_parser().parse_args(["--commands-per-second-per-uid", "3", "--command-burst-per-uid", "4"])
    )
    from_flags = load_config(None, environ, {k: v for k, v in args.items() if k != "config"})
    assert (from_flags.commands_per_second_per_uid, from_flags.command_burst_per_uid) == (3.0, 4)
    for flags in ({"commands_per_second_per_uid": 0}, {"command_burst_per_uid": 0}):
        with pytest.raises(ConfigError):
            load_config(None, {}, flags)


@NEEDS_ROOT
def test_a_reload_changes_the_bounds_at_once_and_keeps_the_connections(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, agents: Callable[[int, Path], Agent]
) -> None:
    config = reachable_tmp / "berthd.toml"
    config.write_text("commands_per_second_per_uid = 0.2\ncommand_burst_per_uid = 2\n")
    daemon = start_berthd(root=reachable_tmp, extra_args=["--socket-mode", "0666", "--config", str(config)])
    caller = agents(FLOODER, daemon.socket)
    caller.connect(2)
    assert caller.answers(0, "ping\nping\n") == [PONG, PONG]
    busy_wait(caller.ask(1, "ping"), FLOODER, "0.2", 2)
    config.write_text("commands_per_second_per_uid = 100\ncommand_burst_per_uid = 50\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP: config reloaded" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.6)  # at 100 a second the bucket is full again by now, at 0.2 it would hold a token at most
    again = caller.answers(0, ping_lines("r", 60))
    assert again[:50] == [{**PONG, "id": f"r-{i}"} for i in range(50)]
    assert any(not answer["ok"] for answer in again[50:]), again[50:]
    for answer in again[50:]:
        if not answer["ok"]:
            busy_wait(answer, FLOODER, "100", 50)


@NEEDS_ROOT
def test_a_connection_waiting_for_its_turn_with_a_line_to_answer_is_not_idle(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, agents: Callable[[int, Path], Agent]
) -> None:
    options = ["--socket-mode", "0666", "--idle-timeout", "1.5"]
    options += ["--commands-per-second-per-uid", "0.5", "--command-burst-per-uid", "1"]
    daemon = start_berthd(root=reachable_tmp, extra_args=options)
    caller = agents(FLOODER, daemon.socket)
    caller.connect()
    assert caller.ask(0, "ping") == PONG
    assert busy_wait(caller.ask(0, "ping"), FLOODER, "0.5", 1) > 1.5
    # sent at once, read when its turn comes, past the idle timeout: answered, and the connection kept
    assert caller.ask(0, '{"cmd": "ping", "id": 1}') == {**PONG, "id": 1}
    assert "idle for" not in daemon.log()


@NEEDS_ROOT
def test_berth_upload_past_the_burst_sends_each_refused_chunk_again_at_its_turn(
    limited_berthd: Callable[[float, int], Berthd], reachable_tmp: Path
) -> None:
    daemon = limited_berthd(5, 2)
    payload = os.urandom(12 * 4096)
    executable = reachable_tmp / "tool.bin"
    executable.write_bytes(payload)
    executable.chmod(0o644)
    cache = reachable_tmp / "cache"
    cache.mkdir()
    os.chown(cache, FLOODER, FLOODER)
    pid = os.fork()
    if pid == 0:  # the upload runs as another uid, in this process's copy of berth
        code = 1
        try:
            os.environ["XDG_CACHE_HOME"] = str(cache)
            os.setgroups([])
            os.setgid(FLOODER)
            os.setuid(FLOODER)
            with Client(daemon.socket) as client:
                result = upload_file(client, "burst-upload", executable, [], 4096, lambda done, total: None)
            code = 0 if result["size"] == len(payload) else 2
        except BaseException:  # noqa: BLE001 - the forked child reports anything, and never returns into pytest
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # 14 commands with a burst of 2, faster than 5 a second: chunks were refused on the way, and sent again
    assert daemon.log().count(f"uid={FLOODER}") >= 14
    assert '"error":"busy"' in daemon.log()
    info = daemon.call("apps:info burst-upload")
    assert info.ok, info
