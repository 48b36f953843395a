"""Clients that attack the connection itself: idle floods from one user, deep JSON, trickled lines.

The flooding tests use real users (created here, removed afterwards), each driving its connections from
a process of its own that runs as that user, so berthd sees their uids through SO_PEERCRED.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_proc import Berthd
from tests.test_hostile_archives import DrippingServer
from tests.users import NEEDS_ROOT, User, system_users
from tests.wire import RawConnection

PONG = {"ok": True, "output": "pong"}
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"  # our venv's may be root's only

# An agent that holds connections for one user: one command a line on stdin, one JSON answer a line.
#   open N      connect N times, then wait a second for their first lines: "held" or the answer, for each
#   ask LINE    a new connection, one request, its answer (or "closed"), closed again
#   closed S    wait up to S seconds until berthd has closed every held connection: seconds each lasted
AGENT = r"""
import json, select, socket, sys, time
path, held = sys.argv[1], []

def connect():
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    return sock

def first_line(sock, deadline):
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        try:
            chunk = sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            return "closed"
        data += chunk
    return json.loads(data)

for command in sys.stdin:
    verb, _, rest = command.strip().partition(" ")
    if verb == "open":
        fresh = [(connect(), time.monotonic()) for _ in range(int(rest))]
        results, deadline = [], time.monotonic() + 1.0
        for sock, opened in fresh:
            answer = first_line(sock, deadline)
            if answer is None:
                held.append((sock, opened))
                results.append("held")
            else:
                sock.close()
                results.append(answer)
        print(json.dumps(results), flush=True)
    elif verb == "ask":
        sock = connect()
        try:
            sock.sendall(rest.encode() + b"\n")
        except OSError:
            pass  # a connection refused as busy may be closed already: its answer is there to read
        print(json.dumps(first_line(sock, time.monotonic() + 30) or "no answer"), flush=True)
        sock.close()
    elif verb == "closed":
        lasted, deadline = [], time.monotonic() + float(rest)
        for sock, opened in held:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                ended = sock.recv(1) == b""
            except (TimeoutError, OSError):
                ended = False
            lasted.append(round(time.monotonic() - opened, 2) if ended else None)
        held.clear()
        print(json.dumps(lasted), flush=True)
"""


class Agent:
    """A process of one user's that holds and makes connections to berthd."""

    def __init__(self, user: User, socket_path: Path) -> None:
        self.uid = user.uid
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", AGENT, str(socket_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd="/",
            text=True,
        )

    def command(self, line: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def open_berthd() -> Iterator[Callable[..., Berthd]]:
    """A berthd whose socket every local user can reach (mode 0666 in a world-searchable folder)."""
    started: list[tuple[Berthd, Path]] = []

    def start(*extra: str) -> Berthd:
        workdir = Path(tempfile.mkdtemp(prefix="berth-hostile-"))
        workdir.chmod(0o755)
        (workdir / "run").mkdir(mode=0o755)
        daemon = Berthd(workdir, extra_args=["--socket-mode", "0666", *extra]).start()
        started.append((daemon, workdir))
        return daemon

    yield start
    for daemon, workdir in started:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@NEEDS_ROOT
def test_an_idle_flood_from_one_user_leaves_other_users_and_root_served(
    open_berthd: Callable[..., Berthd],
) -> None:
    idle_timeout = 6.0
    daemon = open_berthd(
        "--max-clients", "6", "--max-clients-per-uid", "4", "--idle-timeout", str(idle_timeout)
    )
    with system_users("bflood", "bother") as (flood_user, other_user):
        flooder, other = Agent(flood_user, daemon.socket), Agent(other_user, daemon.socket)
        try:
            # berthd may take a user's simultaneous connections in any order: counts, not positions
            flood = flooder.command("open 8")
            refused = [answer for answer in flood if answer != "held"]
            assert len(refused) == 4, flood
            for answer in refused:
                assert (answer["ok"], answer["error"]) == (False, "busy")
                assert f"uid {flooder.uid}" in answer["output"]
            # another user still gets in; once only root's slot is left, it is told busy
            second = other.command("open 2")
            assert second.count("held") == 1, second
            (last,) = [answer for answer in second if answer != "held"]
            assert last["error"] == "busy" and "root" in last["output"]
            assert other.command("ask ping")["error"] == "busy"
            # root still gets answers while all of that is held (on one connection: the slot kept for root
            # is one, and a connection root just closed may still hold it for a moment)
            with daemon.client() as root:
                assert root.call("ping").output == "pong"
                assert root.call("apps:list").ok
            # the idle connections are closed after the timeout, not before; then everyone is served again
            check_period = min(1.0, idle_timeout / 10)
            for lasted in (flooder.command("closed 20"), other.command("closed 20")):
                assert all(seconds is not None for seconds in lasted), lasted
                assert all(
                    idle_timeout - 0.5 <= seconds <= idle_timeout + check_period + 3 for seconds in lasted
                ), lasted
            assert other.command("ask ping") == PONG
            assert flooder.command("ask ping") == PONG
        finally:
            flooder.close()
            other.close()
    log = daemon.log()
    assert f"refusing uid={flood_user.uid}" in log
    assert log.count("idle for") >= 5


def test_a_connection_waiting_on_its_command_or_a_follower_is_not_idle(start_berthd) -> None:  # type: ignore[no-untyped-def]
    daemon = start_berthd(extra_args=["--idle-timeout", "1"])
    assert daemon.call(["apps:from-local", "napper", "/bin/sleep", "--", "3"]).ok
    assert daemon.call("apps:create quiet").ok
    with RawConnection(daemon.socket) as running, RawConnection(daemon.socket) as follower:
        follower.send(b"logs quiet --tail\n")
        started = time.monotonic()
        answer = running.request(b"run napper")
        assert answer["ok"] is True, answer
        assert time.monotonic() - started >= 2.5
        # the follower outlived the timeout three times over: it still streams, berthd has not closed it
        follower.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            follower.sock.recv(1)
        # and the idle time of the finished command's connection starts from its answer
        time.sleep(0.3)
        assert running.request(b"ping") == PONG


def test_a_line_trickled_in_byte_by_byte_does_not_hold_a_connection(start_berthd) -> None:  # type: ignore[no-untyped-def]
    daemon = start_berthd(extra_args=["--idle-timeout", "1.5"])
    with RawConnection(daemon.socket, timeout=10) as conn:
        started = time.monotonic()
        closed_after = None
        for _ in range(40):
            try:
                conn.send(b"p")
            except OSError:
                closed_after = time.monotonic() - started
                break
            conn.sock.settimeout(0.25)
            try:
                if conn.sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:  # closed by berthd with our unread bytes in its buffer
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None, "a connection sending a line that never ends was kept"
        assert closed_after >= 1.2  # not before the idle timeout; that it was closed at all is the point
    # a blank line is no command either
    with RawConnection(daemon.socket, timeout=10) as conn:
        started = time.monotonic()
        for _ in range(3):
            conn.send(b"\n")
            time.sleep(0.5)
        conn.sock.settimeout(5)
        assert conn.sock.recv(1) == b""
        assert time.monotonic() - started <= 4


def nested(depth: int) -> bytes:
    return b'{"cmd": "apps:create", "args": {"app": ' + b"[" * depth + b"]" * depth + b"}}"


@pytest.mark.parametrize("depth", [65, 1_000, 100_000, 400_000])  # 400,000 deep is 800 KB: within --max-line
def test_deep_json_is_refused_and_the_lines_after_it_are_answered(berthd: Berthd, depth: int) -> None:
    with RawConnection(berthd.socket) as conn:
        conn.send(nested(depth) + b'\nping\n{"cmd": "ping", "id": 2}\nping\n')
        refused = conn.read_message()
        assert (refused["ok"], refused["error"]) == (False, "invalid_request")
        assert "nested deeper than 64 levels" in refused["output"]
        assert conn.read_message() == PONG
        assert conn.read_message() == {**PONG, "id": 2}
        assert conn.read_message() == PONG
    assert berthd.call("apps:list").data == []


def test_json_as_deep_as_the_limit_is_read(berthd: Berthd) -> None:
    # the request object and `args` are two levels: 62 more make 64, the limit
    with RawConnection(berthd.socket) as conn:
        answer = conn.request(nested(62))
        assert answer["error"] == "invalid_argument"  # read, then refused for what it says
        assert conn.request(nested(63))["error"] == "invalid_request"


def test_deep_json_over_socat_gets_its_answer_and_the_next_line_too(berthd: Berthd) -> None:
    lines = nested(50_000) + b"\nping\n"
    out = subprocess.run(["socat", "-t", "5", "-", f"UNIX-CONNECT:{berthd.socket}"], input=lines,
                         capture_output=True, timeout=30).stdout  # fmt: skip
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a.get("error") for a in answers] == ["invalid_request", None]
    assert answers[1] == PONG


def test_a_client_that_reads_nothing_is_let_go_after_the_idle_timeout(start_berthd) -> None:  # type: ignore[no-untyped-def]
    """300 pipelined `help` lines into a 1 KiB receive buffer, never read: berthd's answers back up, and
    it lets the connection go after --idle-timeout instead of holding the slot for as long as it likes."""
    daemon = start_berthd(extra_args=["--idle-timeout", "1"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(str(daemon.socket))
    sock.sendall(b"help\n" * 300)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "it read nothing" not in daemon.log():
        time.sleep(0.2)
    assert "it read nothing for 1 s" in daemon.log()
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    answers = [line for line in received.split(b"\n") if line.startswith(b'{"ok"')]
    assert len(answers) < 300  # let go before the end, and the connection is closed (recv saw EOF)
    assert daemon.call("ping").output == "pong"


def upload_begin_as(
    user: User | None, daemon: Berthd, app: str, size: int, chunks: int = 1, *options: str, name: str = "tool"
) -> dict[str, Any]:
    """`upload:begin` from a process of `user` (root when None), through socat."""
    drop = [] if user is None else ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
    words = [app, name, str(size), str(chunks), *options]
    line = json.dumps({"cmd": "upload:begin", "args": words}) + "\n"
    out = subprocess.run(
        [*drop, "socat", "-t", "10", "-", f"UNIX-CONNECT:{daemon.socket}"],
        input=line.encode(), capture_output=True, timeout=30,
    )  # fmt: skip
    answer = json.loads(out.stdout.splitlines()[-1])
    assert isinstance(answer, dict)
    return answer


@NEEDS_ROOT
def test_one_user_cannot_take_every_upload_slot_and_root_keeps_one(open_berthd) -> None:  # type: ignore[no-untyped-def]
    daemon = open_berthd("--max-uploads", "4", "--max-uploads-per-uid", "2", "--max-uploads-per-app", "8")
    with system_users("upa", "upb") as (alice, bob):
        answers = [upload_begin_as(alice, daemon, f"a{i}", 10) for i in range(3)]
        assert [a["ok"] for a in answers] == [True, True, False], answers
        assert answers[2]["error"] == "busy" and f"uid {alice.uid}" in answers[2]["output"]
        assert upload_begin_as(bob, daemon, "b0", 10)["ok"]
        last = upload_begin_as(bob, daemon, "b1", 10)  # the last slot is root's
        assert (last["ok"], last["error"]) == (False, "busy"), last
        assert not any(c.isdigit() for c in last["output"]), last  # nothing of the others' uploads told
        assert upload_begin_as(None, daemon, "r0", 10)["ok"]
        # all of the sessions together must fit on the disk once complete
    # (in chunks whose lines a --max-line of 1 TiB takes: berthd refuses at once chunks it could never read)
    roomy = open_berthd("--max-upload-bytes", str(1 << 60), "--max-line", str(1 << 40))
    huge = upload_begin_as(None, roomy, "big", 1 << 59, 1_000_000)
    assert (huge["ok"], huge["error"]) == (False, "busy") and "not enough free disk" in huge["output"]
    assert daemon.call("ping").output == "pong"


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class CountingDrip(DrippingServer):
    """The dripping server of the archive tests, counting the downloads it is serving at once."""

    def __init__(self) -> None:
        self.active = 0
        self.count_lock = threading.Lock()
        super().__init__()

    def drip(self, conn: socket.socket) -> None:
        with self.count_lock:
            self.active += 1
        try:
            super().drip(conn)
        finally:
            with self.count_lock:
                self.active -= 1


@NEEDS_ROOT
def test_one_users_slow_downloads_take_two_threads_not_berthds(open_berthd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """12 deploys from a server that drips a byte every 0.2 s, from one user: two download at a time (the
    rest wait their turn), another user's deploy still starts its download, and root's work is served."""
    daemon = open_berthd("--download-timeout", "60")
    drip = CountingDrip()
    clients: list[subprocess.Popen[bytes]] = []
    try:
        with system_users("dla", "dlb") as (alice, bob):

            def deploy_as(user: User, app: str) -> None:
                drop = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
                line = f"git:from-archive {app} http://127.0.0.1:{drip.port}/{app}.tar.gz\n".encode()
                proc = subprocess.Popen(
                    [*drop, "socat", "-t", "90", "-", f"UNIX-CONNECT:{daemon.socket}"],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                assert proc.stdin is not None
                proc.stdin.write(line)
                proc.stdin.flush()
                clients.append(proc)

            for index in range(12):
                deploy_as(alice, f"slow{index}")
            wait_until(lambda: drip.active == 2)
            time.sleep(1.0)  # the other ten had their chance to start, and waited
            assert drip.active == 2
            deploy_as(bob, "bobs")
            wait_until(lambda: drip.active == 3)
            tool = tmp_path / "tool.sh"
            tool.write_text("#!/bin/sh\necho served\nexec sleep 1000\n")
            tool.chmod(0o755)
            assert daemon.call(["apps:from-local", "rootapp", str(tool)]).ok
            assert daemon.call("ps:start rootapp").ok
            assert daemon.call("logs rootapp --num 5").ok
            assert daemon.call("ps:stop rootapp").ok
    finally:
        for proc in clients:
            proc.kill()
            proc.wait()
        drip.close()
