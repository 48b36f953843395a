"""Bad input gets a clear error and the daemon goes on serving everyone."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd
from tests.wire import RawConnection

BAD_LINES = [
    (b"\xff\xfe apps:create x", "invalid_request", "UTF-8"),
    (b"apps:create a\x00b", "invalid_request", "NUL"),
    (b'{"cmd": "apps:create", "args": [', "invalid_request", "malformed JSON"),
    (b'{"cmd": 7}', "invalid_request", "Expected `str`"),
    (b'{"cmd": "apps:create", "args": "x"}', "invalid_request", "args"),
    (b'{"cmd": "apps:create", "args": ["x"], "extra": 1}', "invalid_request", "extra"),
    (b'{"cmd": "apps:create", "args": {"app": 5}}', "invalid_argument", "app"),
    (b'{"cmd": "apps:create", "args": {"nope": "x"}}', "invalid_argument", "unknown parameter"),
    (b'apps:create "unterminated', "invalid_request", "quotation"),
    (b"apps:create", "invalid_argument", "Usage: apps:create APP"),
    (b"apps:create a b", "invalid_argument", "unexpected argument"),
    (b"apps:create Bad_Name", "invalid_argument", "lowercase letters"),
    (b"apps:create x --bogus", "invalid_argument", "unknown option --bogus"),
    (b"apps:destroy x --force=yes", "invalid_argument", "takes no value"),
    (b"[1, 2]", "invalid_command", "Invalid command"),
]


@pytest.mark.parametrize(("line", "code", "text"), BAD_LINES)
def test_bad_line_gets_a_clear_error_and_the_connection_goes_on(
    berthd: Berthd, line: bytes, code: str, text: str
) -> None:
    with RawConnection(berthd.socket) as conn:
        answer = conn.request(line)
        assert answer["ok"] is False
        assert answer["error"] == code
        assert text in answer["output"]
        assert conn.request(b"ping") == {"ok": True, "output": "pong"}
    assert berthd.call("apps:list").data == []


def test_a_line_over_the_limit_is_refused_and_the_rest_skipped(start_berthd) -> None:  # type: ignore[no-untyped-def]
    daemon = start_berthd(extra_args=["--max-line", "1024"])
    with RawConnection(daemon.socket) as conn:
        conn.send(b"apps:create " + b"a" * 5000 + b"\nping\n")
        answer = conn.read_message()
        assert answer["error"] == "line_too_long"
        assert "1024" in answer["output"]
        assert conn.read_message() == {"ok": True, "output": "pong"}
        # a long line sent in pieces is caught too, and the next line is still read
        for _ in range(4):
            conn.send(b"x" * 400)
        conn.send(b"yyy\nping\n")
        assert conn.read_message()["error"] == "line_too_long"
        assert conn.read_message() == {"ok": True, "output": "pong"}
    assert daemon.call("apps:list").data == []


def test_shell_metacharacters_reach_no_shell(berthd: Berthd, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    lines = [
        f'apps:create "x; touch {target}"',
        f"apps:create $(touch {target})",
        f"apps:create `touch {target}`",
        f"apps:create x && touch {target}",
        f"apps:create x | touch {target}",
        f"apps:create x > {target}",
    ]
    with RawConnection(berthd.socket) as conn:
        for line in lines:
            answer = conn.request(line.encode())
            assert answer["ok"] is False, line
            assert answer["error"] == "invalid_argument", line
    assert not target.exists()
    assert berthd.call("apps:list").data == []


def test_300_connections_at_once_are_served_or_told_busy(berthd: Berthd) -> None:
    connections = [RawConnection(berthd.socket) for _ in range(300)]
    try:
        answers: list[dict[str, object] | None] = [None] * 300

        def ask(index: int) -> None:
            conn = connections[index]
            # a refused connection may be closed already: its answer is waiting to be read
            with contextlib.suppress(OSError):
                conn.send(b"ping\n")
            try:
                answers[index] = conn.read_message()
            except (ConnectionError, OSError):
                answers[index] = {"closed": True}

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(300)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        pongs = sum(1 for a in answers if a == {"ok": True, "output": "pong"})
        busy = [a for a in answers if a and a.get("error") == "busy"]
        assert pongs == 256
        assert len(busy) == 44
        assert all(a is not None and a.get("ok") is False for a in busy)
    finally:
        for conn in connections:
            conn.close()
    # the daemon notices the closed connections on its own time; then it serves new clients again
    deadline = time.monotonic() + 10
    while (answer := berthd.call("ping")).error == "busy" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert answer.output == "pong"


def test_a_client_that_vanishes_mid_command_leaves_the_daemon_serving(berthd: Berthd) -> None:
    for index in range(20):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(berthd.socket))
        sock.sendall(f"apps:create gone-{index}\nhelp\nhelp\n".encode())
        sock.close()
    # Each command still runs although nobody waits for its answer; later lines of a gone client are dropped.
    expected = sorted(f"gone-{i}" for i in range(20))
    deadline = time.monotonic() + 10
    while (names := berthd.call("apps:list").output.splitlines()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert names == expected


def test_a_wrongly_typed_named_argument_gets_a_clean_refusal(berthd: Berthd) -> None:
    # A list where a word belongs: refused by the parameter struct, never reaching the handler.
    with RawConnection(berthd.socket) as conn:
        answer = conn.request(
            json.dumps({"cmd": "apps:set", "args": {"app": "x", "key": ["a"], "value": "v"}}).encode()
        )
        assert answer["ok"] is False
        assert answer["error"] == "invalid_argument"
        assert "Traceback" not in answer["output"]
        assert conn.request(b"ping")["output"] == "pong"


def test_a_name_that_ends_in_a_newline_is_refused_wherever_a_name_is_checked(berthd: Berthd) -> None:
    """`$` in a Python pattern also matches before a last newline: every name check anchors at the very
    end, so `X\\n` is no variable name and `app\\n` no app (config:export would have written a line of
    its own, which a shell sourcing it runs)."""
    assert berthd.call("apps:create nl").ok
    for words in (
        ["apps:create", "evil\n"],
        ["config:set", "nl", "X\n=x/../pwn"],
        ["config:set", "nl", "--env", "Y\n=1"],
        ["apps:set", "nl", "restart-policy", "always\n"],
        ["apps:set", "nl", "user", "root\n"],
        ["upload:begin", "nl", "run\n", "5", "1"],
        ["ps:scale", "nl", "main=1\n"],
    ):
        answer = berthd.call(words)
        assert (answer.ok, answer.error) == (False, "invalid_argument"), (words, answer)
    assert [a["name"] for a in berthd.call("apps:list").data] == ["nl"]
    assert berthd.call("config:export nl").output.strip() == ""
