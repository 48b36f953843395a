"""Clients that attack the connection itself: deep JSON."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.daemon_proc import Berthd
from tests.wire import RawConnection

PONG = {"ok": True, "output": "pong"}


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
