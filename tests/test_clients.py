"""The clients: `berth` on the command line, the blocking client and the trio client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import trio

from berth.client import Client, CommandFailed, closed_by_peer
from berth.trio_client import TrioClient
from tests.daemon_proc import ROOT, Berthd
from tests.test_native_runner import wait_for


def berth(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_berth_prints_the_output_and_exits_0_when_ok(berthd: Berthd) -> None:
    result = berth("--socket", str(berthd.socket), "apps:create", "cli-app")
    assert (result.returncode, result.stdout) == (0, "Creating cli-app... done\n")


def test_berth_exits_1_and_prints_to_stderr_when_not_ok(berthd: Berthd) -> None:
    result = berth("--socket", str(berthd.socket), "apps:destroy", "nope")
    assert result.returncode == 1
    assert "Requires --force flag" in result.stderr


def test_berth_sends_words_without_quoting_trouble(berthd: Berthd) -> None:
    berth("--socket", str(berthd.socket), "apps:create", "q")
    assert berth("--socket", str(berthd.socket), "config:set", "q", 'A=it\'s "quoted" $HOME').returncode == 0
    assert berthd.call("config:get q A").output == 'it\'s "quoted" $HOME'


def test_berth_json_prints_raw_lines_and_uses_the_environment(berthd: Berthd) -> None:
    result = berth("--json", "ping", env={"BERTHD_SOCK_PATH": str(berthd.socket)})
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"ok": True, "output": "pong"}


def test_berth_without_a_daemon_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = berth("--socket", str(tmp_path / "none.sock"), "ping")
    assert result.returncode == 3
    assert f"cannot reach berthd at {tmp_path / 'none.sock'}" in result.stderr
    assert "BERTHD_SOCK_PATH" in result.stderr


def test_berth_alone_lists_usage_and_exits_2() -> None:
    result = berth()
    assert result.returncode == 2
    assert "usage: berth" in result.stdout


def test_berth_version_names_client_and_daemon(berthd: Berthd) -> None:
    result = berth("--socket", str(berthd.socket), "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("berth ")
    assert "berthd 0." in result.stdout and "None" not in result.stdout


def test_blocking_client_keeps_one_connection_and_can_check(berthd: Berthd) -> None:
    with Client(berthd.socket) as client:
        assert client.call("ping").output == "pong"
        assert client.call(["apps:create", "blocking"]).ok
        assert client.call("apps:info", {"app": "blocking"}).data["name"] == "blocking"
        with pytest.raises(CommandFailed) as excinfo:
            client.call("apps:info ghost", check=True)
        assert excinfo.value.response.error == "not_found"


def test_trio_client_runs_commands_concurrently(berthd: Berthd) -> None:
    async def main() -> list[str]:
        outputs: list[str] = []

        async def one(index: int) -> None:
            async with TrioClient(berthd.socket) as client:
                outputs.append((await client.call(["apps:create", f"t{index}"], check=True)).output)

        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(one, index)
        return outputs

    outputs = trio.run(main)
    assert sorted(outputs) == sorted(f"Creating t{i}... done" for i in range(10))


def test_both_clients_reconnect_after_berthd_closed_an_idle_connection(
    start_berthd: Callable[..., Berthd],
) -> None:
    daemon = start_berthd(extra_args=["--idle-timeout", "1"])
    with Client(daemon.socket) as client:
        assert client.call("ping").output == "pong"
        first = client._sock
        wait_for(lambda: first is not None and closed_by_peer(first.fileno()), timeout=10)
        assert client.call("ping").output == "pong"  # on a new connection, not a broken pipe
        assert client._sock is not first

    async def main() -> list[str]:
        async with TrioClient(daemon.socket) as client:
            first = (await client.call("ping")).output
            stream = client._stream
            assert stream is not None
            while not closed_by_peer(stream.socket.fileno()):
                await trio.sleep(0.1)
            return [first, (await client.call("ping")).output]

    assert trio.run(main) == ["pong", "pong"]
