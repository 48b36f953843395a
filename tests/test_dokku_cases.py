"""dokku-daemon's own functional cases, run against berthd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.daemon_proc import ROOT, Berthd, berthd_command


def run_berthd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*berthd_command(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def socat(sock: Path, data: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["socat", "-t", "5", "-", f"UNIX-CONNECT:{sock}"],
        input=data.encode(),
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.decode().splitlines()]


def test_dash_h_prints_usage_and_exits_0() -> None:
    result = run_berthd("-h")
    assert result.returncode == 0
    assert "usage: berthd" in result.stdout
    assert "--socket" in result.stdout


def test_dash_v_prints_the_version() -> None:
    from berthd import __version__

    result = run_berthd("-v")
    assert result.returncode == 0
    assert result.stdout.strip() == f"Version {__version__}"


def test_an_unknown_option_exits_1_with_error() -> None:
    result = run_berthd("--no-such-option")
    assert result.returncode == 1
    assert result.stderr.startswith("Error:")


def test_environment_sets_the_socket_and_the_log(tmp_path: Path) -> None:
    sock = tmp_path / "env" / "berthd.sock"
    log = tmp_path / "env.log"
    env = {
        **os.environ,
        "BERTHD_SOCK_PATH": str(sock),
        "BERTHD_LOGFILE": str(log),
        "BERTHD_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.Popen(
        [*berthd_command(), "--log-level", "info"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert socat(sock, "ping\n") == [{"ok": True, "output": "pong"}]
        assert 'cmd="ping"' in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_unknown_commands_get_the_standard_answer(berthd: Berthd) -> None:
    assert socat(berthd.socket, "no:such-command arg\n") == [
        {"ok": False, "output": "Invalid command", "error": "invalid_command"}
    ]


def test_topic_help_is_allowed_and_lists_its_commands(berthd: Berthd) -> None:
    [answer] = socat(berthd.socket, "apps:help\n")
    assert answer["ok"] is True
    assert "apps:create" in str(answer["output"])


def test_help_of_a_command_that_is_not_a_topic_fails(berthd: Berthd) -> None:
    [answer] = socat(berthd.socket, "apps:create:help\n")
    assert answer == {"ok": False, "output": "Invalid command", "error": "invalid_command"}


def test_destroy_requires_force_and_succeeds_with_it(berthd: Berthd) -> None:
    answers = socat(
        berthd.socket, "apps:create doomed\napps:destroy doomed\napps:destroy doomed --force\napps:list\n"
    )
    assert answers[0] == {"ok": True, "output": "Creating doomed... done"}
    assert answers[1]["ok"] is False
    assert answers[1]["output"] == "Requires --force flag"
    assert answers[2]["ok"] is True
    assert answers[3]["output"] == ""


def test_multi_line_output_is_one_line_with_escaped_newlines(berthd: Berthd) -> None:
    out = subprocess.run(
        ["socat", "-t", "5", "-", f"UNIX-CONNECT:{berthd.socket}"],
        input=b"help\n",
        capture_output=True,
        timeout=30,
    ).stdout
    assert out.count(b"\n") == 1 and out.endswith(b"\n")
    assert b"\\n" in out
    assert "\n" in json.loads(out)["output"]


def test_each_command_and_its_response_are_logged(berthd: Berthd) -> None:
    socat(berthd.socket, "apps:create logged-app\nbogus\n")
    log = berthd.log()
    assert 'cmd="apps:create logged-app" -> {"ok":true,"output":"Creating logged-app... done"}' in log
    assert '"output":"Invalid command","error":"invalid_command"' in log
    assert "uid=" in log and "pid=" in log


SNIPPET = """
import os
import subprocess

def run_command(command, timeout=60):
    daemon_socket = '/var/run/dokku-daemon/dokku-daemon.sock'
    if not os.path.exists(daemon_socket) or not os.access(daemon_socket, os.W_OK):
        return False

    subprocess_command = [
        'nc',
        '-q', '2',            # time to wait after eof
        '-w', '2',            # timeout
        '-U', daemon_socket,  # socket to talk to
    ]

    ps = subprocess.Popen(['echo', command], stdout=subprocess.PIPE)
    output = None

    with subprocess.Popen(
            subprocess_command,
            stdin=ps.stdout,
            stdout=subprocess.PIPE,
            preexec_fn=os.setsid) as process:
        try:
            output = process.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)  # send signal to the process group
            output = process.communicate()[0]
    ps.wait(timeout)

    return ps.returncode == 0

run_command("apps:create example-app")
"""


def test_the_dokku_daemon_python_snippet_creates_an_app(berthd: Berthd) -> None:
    script = SNIPPET.replace("/var/run/dokku-daemon/dokku-daemon.sock", str(berthd.socket))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert berthd.call("apps:list").output.splitlines() == ["example-app"]


def test_nc_gets_the_answer_after_half_closing(berthd: Berthd) -> None:
    out = subprocess.run(
        ["nc", "-N", "-U", str(berthd.socket)],
        input=b"apps:create nc-app\nping",
        capture_output=True,
        timeout=30,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines == [{"ok": True, "output": "Creating nc-app... done"}, {"ok": True, "output": "pong"}]


def test_socat_pipeline_gets_both_answers(berthd: Berthd) -> None:
    out = subprocess.run(
        f"printf 'ping\\napps:list\\n' | socat - UNIX-CONNECT:{berthd.socket}",
        shell=True,
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"ok": True, "output": "pong"},
        {"ok": True, "output": "", "data": []},
    ]


def test_crlf_line_ends_work(berthd: Berthd) -> None:
    answers = socat(berthd.socket, "ping\r\napps:create crlf-app\r\n")
    assert answers == [{"ok": True, "output": "pong"}, {"ok": True, "output": "Creating crlf-app... done"}]


def test_flag_after_the_name_works_like_flag_before(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd()
    answers = socat(
        daemon.socket, "apps:create x\napps:create y\napps:destroy x --force\n--force apps:destroy y\n"
    )
    assert [a["ok"] for a in answers] == [True, True, True, True]
    assert daemon.call("apps:list").data == []
