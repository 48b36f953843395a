"""dokku's words, as dokku users type them: `logs -t`/`-n`, apps:exists, apps:report, apps:rename,
ps:rebuild, and `help COMMAND` / `COMMAND --help`."""

from __future__ import annotations

from pathlib import Path

from berth.client import Client
from tests.daemon_proc import Berthd
from tests.test_native_runner import create, script, wait_for

# short flags


def test_logs_takes_dokkus_n_and_t(berthd: Berthd, tmp_path: Path) -> None:
    body = "#!/bin/sh\nfor i in $(seq 10); do echo line $i; done\nsleep 2\necho after\nexec sleep 1000\n"
    writer = script(tmp_path, "talker.sh", body)
    create(berthd, "talker", writer)
    assert berthd.call("ps:start talker").ok
    wait_for(lambda: "line 10" in berthd.call("logs talker").output)
    answer = berthd.call("logs talker -n 5")
    assert answer.ok, answer.output
    assert [line["text"] for line in answer.data] == [f"line {i}" for i in range(6, 11)]
    with Client(berthd.socket, timeout=30) as client:
        stream = client.stream(["logs", "talker", "-t", "-n", "1"])
        followed = [message["line"] for message in (next(stream), next(stream))]  # type: ignore[index]
    assert followed == ["line 10", "after"]
    berthd.call("ps:stop talker")


def test_unknown_short_flags_are_refused_with_the_usage(berthd: Berthd) -> None:
    answer = berthd.call("logs talker -x")
    assert not answer.ok and answer.error == "invalid_argument"
    assert "unknown option -x" in answer.output
    assert "Usage: logs APP [--num N | -n N] [--tail | -t]" in answer.output
    answer = berthd.call("apps:create -t")
    assert answer.error == "invalid_argument" and "unknown option -t" in answer.output
    assert berthd.call("apps:list").output == ""


# help


def test_help_of_one_command_describes_each_option(berthd: Berthd) -> None:
    answer = berthd.call("help apps:create")
    assert answer.ok, answer.output
    assert answer.output.splitlines()[0] == "Usage: apps:create APP"
    assert "lowercase letters, digits and dashes" in answer.output
    assert berthd.call("apps:create --help").output == answer.output
    assert berthd.call("apps:list").output == ""  # --help made nothing
    logs = berthd.call("logs --help").output
    assert "  --num N, -n N" in logs and "  --tail, -t" in logs
    sync = berthd.call("help git:sync").output
    for option in ("--build-cmd CMD", "--executable PATH", "--env KEY=VALUE", "--timeout SECONDS"):
        line = next(line for line in sync.splitlines() if line.strip().startswith(option))
        assert len(line.strip()) > len(option) + 5, line  # described
    assert berthd.call("help no:such").error == "invalid_argument"


def test_help_lines_wrap_and_are_never_padded_wide(berthd: Berthd) -> None:
    for command in ("help", "apps:help", "help git:sync", "git:sync --help"):
        answer = berthd.call(command)
        assert answer.ok, answer.output
        widest = max(answer.output.splitlines(), key=len)
        assert len(widest) <= 120, widest
    lines = berthd.call("help").output.splitlines()
    ping = next(line for line in lines if line.strip().startswith("ping"))
    assert len(ping) < 60, ping
