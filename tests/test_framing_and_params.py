"""The pure parts of the wire: line framing, request splitting, parameter binding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.framing import LineSplitter, TooLong
from berth.request import RequestError, parse_request
from berthd.commands import apps, config  # noqa: F401 - registers the commands
from berthd.errors import CommandError
from berthd.server.params import bind_tokens, usage
from berthd.server.registry import REGISTRY


@given(st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=20), st.data())
def test_lines_come_out_whole_however_the_bytes_are_cut(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    splitter = LineSplitter(max_line=100)
    out: list[bytes | TooLong] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += list(splitter.feed(stream[previous:cut]))
        previous = cut
    out += list(splitter.end())
    expected = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    assert out == expected


def test_an_overlong_line_is_reported_once_and_skipped() -> None:
    splitter = LineSplitter(max_line=10)
    out = list(splitter.feed(b"0123456789abc")) + list(splitter.feed(b"def\nok\n"))
    assert out == [TooLong(10), b"ok"]


def test_a_last_line_without_newline_counts() -> None:
    splitter = LineSplitter(max_line=10)
    assert list(splitter.feed(b"a\nb")) == [b"a"]
    assert list(splitter.end()) == [b"b"]


def test_text_requests_split_like_a_shell_without_one() -> None:
    request = parse_request(b"""config:set app 'A=x y' B="q\\"uote" $HOME `id` ;""")
    assert request is not None
    assert request.cmd == "config:set"
    assert request.tokens == ["app", "A=x y", 'B=q"uote', "$HOME", "`id`", ";"]


def test_flags_before_the_command_move_after_it() -> None:
    request = parse_request(b"--force apps:destroy x")
    assert request is not None
    assert (request.cmd, request.tokens) == ("apps:destroy", ["--force", "x"])


@pytest.mark.parametrize("line", [b"'open", b"\xc3\x28", b"a\x00b", b"{bad json", b"--only --flags"])
def test_unparseable_requests_raise(line: bytes) -> None:
    with pytest.raises(RequestError):
        parse_request(line)


def test_binding_and_usage_come_from_the_struct() -> None:
    command = REGISTRY.lookup("apps:destroy")
    assert command is not None
    assert usage(command.name, command.params) == "apps:destroy APP [--force] [--keep-data]"
    bound = bind_tokens(command.name, command.params, ["x", "--force"])
    assert bound.params.app == "x" and bound.params.force is True  # type: ignore[attr-defined]
    with pytest.raises(CommandError) as excinfo:
        bind_tokens(command.name, command.params, [])
    assert "missing APP" in excinfo.value.message
    assert "Usage: apps:destroy APP [--force] [--keep-data]" in excinfo.value.message


def test_secret_values_are_redacted_in_the_bound_form() -> None:
    command = REGISTRY.lookup("config:set")
    assert command is not None
    bound = bind_tokens(command.name, command.params, ["app", "PASSWORD=hunter2", "PLAIN"])
    assert bound.redacted == ["app", "PASSWORD=***", "***"]
