"""What comes back on the wire: exact JSON, events before the final line, ids echoed, fuzzed input."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon_proc import Berthd
from tests.wire import RawConnection

BLANK = b" \t\r\n\x0b\x0c"

AWKWARD = [
    "say \"hi\" and 'bye'",
    "back\\slash \\n not a newline",
    "tab\there",
    "\x1b[31mred\x1b[0m",
    "bell\x07 and \x01\x02\x1f\x7f",
    "line one\nline two\r\n",
    "unicode: ünïcødé ✓ 🚀 \u2028 \u2029",
    "</script>{}[]",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_awkward_output_round_trips_exactly(berthd: Berthd, value: str) -> None:
    with RawConnection(berthd.socket) as conn:
        conn.request(b"apps:create rt")
        set_line = json.dumps({"cmd": "config:set", "args": ["rt", f"V={value}"]}).encode()
        assert conn.request(set_line)["ok"] is True
        conn.send(b"config:get rt V\n")
        raw = conn.read_line()
        assert b"\n" not in raw
        answer = json.loads(raw)
        assert answer["output"] == value
        assert answer["data"] == {"V": value}


def test_json_requests_echo_their_id_and_take_named_args(berthd: Berthd) -> None:
    with RawConnection(berthd.socket) as conn:
        answer = conn.request(b'{"cmd": "apps:create", "args": {"app": "named"}, "id": "c-17"}')
        assert answer == {"ok": True, "output": "Creating named... done", "id": "c-17"}
        answer = conn.request(b'{"cmd": "apps:destroy", "args": ["named", "--force"], "id": 3}')
        assert answer["ok"] is True and answer["id"] == 3
        assert conn.request(b'{"cmd": "nope", "id": "x"}') == {
            "ok": False,
            "output": "Invalid command",
            "error": "invalid_command",
            "id": "x",
        }


def test_quoted_words_keep_their_spaces(berthd: Berthd) -> None:
    with RawConnection(berthd.socket) as conn:
        conn.request(b"apps:create q")
        assert conn.request(b"apps:set q description 'two words' ")["ok"] is True
        assert conn.request(b"apps:info q")["data"]["settings"]["description"] == "two words"
        assert conn.request(b'config:set q "A=x y\\"z"')["ok"] is True
        assert conn.request(b"config:get q A")["output"] == 'x y"z'


def test_blank_lines_get_no_answer(berthd: Berthd) -> None:
    with RawConnection(berthd.socket) as conn:
        conn.send(b"\n   \n\t\r\nping\n")
        assert conn.read_message() == {"ok": True, "output": "pong"}


def test_commands_and_help_come_from_one_registry(berthd: Berthd) -> None:
    names = berthd.call("commands").output.splitlines()
    for name in ["help", "commands", "version", "ping", "apps:create", "config:show", "apps:help"]:
        assert name in names
    help_text = berthd.call("help").output
    for name in names:
        if not name.endswith(":help"):
            assert name in help_text
    assert "Usage: config:set APP KEY=VALUE ..." in berthd.call("config:set").output


@pytest.fixture(scope="module")
def shared_berthd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Berthd]:
    daemon = Berthd(tmp_path_factory.mktemp("fuzz")).start()
    yield daemon
    daemon.stop()


_words = st.text(alphabet=string.printable + "äé✓\x00\x1b", max_size=30)
_lines = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.one_of(_words, st.sampled_from(["apps:create", "--force", "--", '"', "'", "\\", "{", "apps:set"]))
    ).map(lambda ws: " ".join(ws).encode("utf-8")),
    st.builds(
        lambda cmd, args: json.dumps({"cmd": cmd, "args": args}).encode(),
        st.sampled_from(["apps:create", "apps:set", "config:set", "ping", "x"]),
        st.one_of(st.lists(_words, max_size=4), st.dictionaries(_words, _words, max_size=3)),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=_lines)
def test_every_fuzzed_line_gets_exactly_one_final_answer(shared_berthd: Berthd, line: bytes) -> None:
    line = line.replace(b"\n", b" ")
    with RawConnection(shared_berthd.socket) as conn:
        conn.send(line + b"\nping\n")
        finals = []
        while True:
            message = conn.read_message()
            if message == {"ok": True, "output": "pong"} and (finals or not line.strip(BLANK)):
                break
            assert "ok" in message or "event" in message
            if "ok" in message:
                finals.append(message)
                assert isinstance(message["output"], str)
                if not message["ok"]:
                    assert message["error"] != "internal", message
        expected = 0 if not line.strip(BLANK) else 1
        assert len(finals) == expected, (line, finals)
