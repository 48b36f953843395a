"""The `metrics` command and `--metrics-listen`: a page Prometheus' own tool accepts, and counts that
move with what callers send."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd
from tests.test_native_runner import create, script, state_of, wait_for
from tests.test_uploads import b64, fixed_chunks, payload
from tests.wire import RawConnection


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    reason = "promtool is not installed (apt-get install prometheus; scripts/test-deps.sh does it as root)"
    if os.environ.get("BERTH_REQUIRE_DOCKER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def promtool_check(page: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=page, capture_output=True, text=True, timeout=30
    )


def check_text_format(page: str) -> None:
    """Prometheus' text format: promtool parses it and its linter finds nothing."""
    checked = promtool_check(page)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def check_openmetrics(page: str) -> None:
    """OpenMetrics: the client library's strict parser takes it (it refuses a page without `# EOF`, a
    counter without `_total`, a histogram without +Inf ...); promtool parses it (exit 1 is a parse
    error), and its linter, which reads the older format, finds only what OpenMetrics does differently
    on purpose: a counter's HELP is under its family's name, not under `NAME_total`."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    families = {family.name: family for family in text_string_to_metric_families(page)}
    checked = promtool_check(page)
    assert checked.returncode in (0, 3), checked.stdout + checked.stderr
    for problem in (checked.stdout + checked.stderr).splitlines():
        name, _, what = problem.partition(" ")
        assert what == "no help text" and name.endswith("_total"), problem
        family = families[name.removesuffix("_total")]
        assert family.type == "counter" and family.documentation, problem


def sample(page: str, name: str, **labels: str) -> float:
    """The value of one sample of the page (0 if it is not there)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in page.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


@pytest.fixture
def served(start_berthd: Callable[..., Berthd]) -> tuple[Berthd, str]:
    port = free_port()
    daemon = start_berthd(extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
    wait_for(lambda: "metrics at http" in daemon.log())  # its UNIX socket listens a little earlier
    return daemon, f"http://127.0.0.1:{port}"


# what Prometheus 2.x sends when it scrapes
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"  # noqa: E501


def fetch(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_the_metrics_command_answers_openmetrics_that_promtool_accepts(berthd: Berthd) -> None:
    answer = berthd.call("metrics")
    assert answer.ok, answer.output
    assert answer.output.endswith("# EOF\n")
    check_openmetrics(answer.output)
    for family in (
        "berthd_commands",
        "berthd_command_duration_seconds",
        "berthd_lock_wait_seconds",
        "berthd_connections_open",
        "berthd_connections_accepted",
        "berthd_connections_refused",
        "berthd_processes",
        "berthd_process_restarts",
        "berthd_process_give_ups",
        "berthd_log_written_bytes",
        "berthd_log_written_lines",
        "berthd_upload_received_bytes",
    ):
        assert f"# TYPE {family} " in answer.output, family
    # this caller's own (the start's readiness probe may be closing still)
    wait_for(lambda: sample(berthd.call("metrics").output, "berthd_connections_open") == 1)


def test_counters_move_with_the_commands_sent(berthd: Berthd) -> None:
    calls = 0

    def settled() -> bool:
        nonlocal calls
        calls += 1
        return sample(berthd.call("metrics").output, "berthd_connections_accepted_total") == calls + 1

    wait_for(settled)  # the start's readiness probe is counted too, a moment after it connected
    before = berthd.call("metrics").output
    with berthd.client() as client:
        for _ in range(3):
            assert client.call("ping").ok
        assert client.call("no-such-command").error == "invalid_command"
        assert client.call("apps:create metered").ok
        assert client.call("apps:create metered").error == "conflict"
    after = berthd.call("metrics").output
    pings = [sample(page, "berthd_commands_total", command="ping", result="ok") for page in (before, after)]
    assert pings[1] - pings[0] == 3
    assert sample(after, "berthd_commands_total", command="<unknown>", result="invalid_command") == 1
    assert "no-such-command" not in after  # what a line asks for is no label: unbounded
    assert sample(after, "berthd_commands_total", command="apps:create", result="ok") == 1
    assert sample(after, "berthd_commands_total", command="apps:create", result="conflict") == 1
    assert sample(after, "berthd_command_duration_seconds_count", command="ping") == 3
    assert sample(after, "berthd_command_duration_seconds_bucket", command="ping", le="+Inf") == 3
    assert sample(after, "berthd_lock_wait_seconds_count") >= 2  # apps:create takes the lock
    accepted = sample(after, "berthd_connections_accepted_total")
    assert accepted - sample(before, "berthd_connections_accepted_total") == 2  # the client, this call


def test_a_started_app_shows_running(berthd: Berthd) -> None:
    create(berthd, "sleeper", "/bin/sleep", "--", "1000")
    assert berthd.call("ps:start sleeper").ok
    wait_for(lambda: state_of(berthd, "sleeper") == "RUNNING")
    page = berthd.call("metrics").output
    assert sample(page, "berthd_processes", state="RUNNING") == 1
    assert sample(page, "berthd_processes", state="FAILED") == 0
    assert 'berthd_processes{state="FAILED"} 0' in page  # every state, zero or not
    berthd.call("ps:stop sleeper")


def test_the_http_page_is_the_same_openmetrics(served: tuple[Berthd, str]) -> None:
    daemon, base = served
    assert daemon.call("ping").ok
    status, content_type, page = fetch(f"{base}/metrics", PROMETHEUS_ACCEPT)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert page.endswith("# EOF\n")
    check_openmetrics(page)
    assert sample(page, "berthd_commands_total", command="ping", result="ok") == 1
    status, content_type, text = fetch(f"{base}/metrics")  # no Accept: the older text format
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    check_text_format(text)
    assert sample(text, "berthd_commands_total", command="ping", result="ok") == 1.0
    assert fetch(f"{base}/")[0] == 404
    assert fetch(f"{base}/metrics/x")[0] == 404


def test_a_slow_or_oversized_http_request_does_not_hold_berthd(served: tuple[Berthd, str]) -> None:
    daemon, base = served
    port = int(base.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port)) as slow, RawConnection(daemon.socket) as conn:
        slow.sendall(b"GET /metr")  # and then nothing
        started = time.monotonic()
        for _ in range(20):
            assert conn.request(b"ping\n")["ok"] is True
        assert time.monotonic() - started < 2
        with socket.create_connection(("127.0.0.1", port), timeout=10) as big:
            big.sendall(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20000)
            answer = big.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
        assert conn.request(b"ping\n")["ok"] is True
        slow.settimeout(10)
        assert slow.recv(100) == b""  # let go after the read timeout, with no answer
    status, _, _ = fetch(f"{base}/metrics")
    assert status == 200


def test_metrics_listen_is_off_by_default_and_a_bad_or_taken_address_stops_the_start(
    start_berthd: Callable[..., Berthd], berthd: Berthd
) -> None:
    assert "metrics at http" not in berthd.log()
    with pytest.raises(RuntimeError, match="metrics_listen"):
        start_berthd("bad", extra_args=["--metrics-listen", "no-port-here"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(
            RuntimeError, match=f"cannot serve the metrics at {address}: Address already in use"
        ):
            start_berthd("taken", extra_args=["--metrics-listen", address])


def test_restarts_and_give_ups_are_counted(berthd: Berthd, tmp_path: Path) -> None:
    crash = script(tmp_path, "crash.sh", "#!/bin/sh\nexit 1\n")
    create(berthd, "quitter", crash, "--restart-policy", "on-failure:2")
    assert berthd.call("ps:start quitter").ok
    wait_for(lambda: state_of(berthd, "quitter") == "FAILED")
    page = berthd.call("metrics").output
    check_openmetrics(page)
    assert sample(page, "berthd_process_restarts_total") == 1  # two runs in all
    assert sample(page, "berthd_process_give_ups_total") == 1
    assert sample(page, "berthd_processes", state="FAILED") == 1
    # berthd's own notes (STARTING, RUNNING, the exits, FAILED) are lines of the process's log too
    log = (berthd.data_dir / "apps" / "quitter" / "logs" / "main.1.log").read_bytes()
    assert sample(page, "berthd_log_written_bytes_total") == len(log)
    assert sample(page, "berthd_log_written_lines_total") == log.count(b"\n")


def test_upload_bytes_are_counted(berthd: Berthd) -> None:
    data = payload(100_000)
    pieces = fixed_chunks(data, 64_000)
    session = berthd.call(["upload:begin", "metered", "app", str(len(data)), "2"]).data["session_id"]
    for index, piece in enumerate(pieces):
        assert berthd.call(["upload:chunk", session, str(index), b64(piece)]).ok
    assert berthd.call(["upload:chunk", session, "9", "!!"]).error == "invalid_argument"  # not stored
    page = berthd.call("metrics").output
    assert sample(page, "berthd_upload_received_bytes_total") == len(data)
    assert sample(page, "berthd_commands_total", command="upload:chunk", result="ok") == 2
