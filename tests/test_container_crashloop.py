"""Containers that keep exiting, on the real test engine: the engine restarts them under the app's policy,
and ps:report shows what it does (restarts, BACKOFF while it waits, FAILED once it gives up, the exit code).
"""

from __future__ import annotations

import time
from typing import Any

import docker
import pytest

from berthd.runners.docker.runner import engine_restart_policy
from tests.daemon_proc import Berthd
from tests.test_docker_runner import deploy, engine_berthd, inspect  # noqa: F401 - the fixture
from tests.test_native_runner import wait_for

CRASH = ["sh", "-c", "echo crashing; exit 4"]
HEALTHY = ["sleep", "1000"]
WATCH_S = 1.0  # the runner looks at a running container this often


@pytest.fixture
def engine(engine_berthd: Berthd) -> Berthd:  # noqa: F811 - the fixture
    """berthd on the test engine. These containers listen on no port: they need no turn (`exapp_ports`)."""
    return engine_berthd


def row_of(berthd: Berthd, app: str) -> dict[str, Any]:
    answer = berthd.call(f"ps:report {app}")
    assert answer.ok, answer.output
    [row] = answer.data
    return dict(row)


def start_image_app(berthd: Berthd, app: str, *options: str, command: list[str]) -> None:
    deploy(berthd, app, *options, command=command)
    answer = berthd.call(f"ps:start {app}")
    assert answer.ok, answer.output


def engine_state(client: docker.DockerClient, app: str) -> tuple[str, bool, int]:
    attrs = inspect(client, app)
    return attrs["State"]["Status"], attrs["State"]["Restarting"], attrs["RestartCount"]


@pytest.mark.parametrize(
    ("policy", "engine_policy"),
    [
        (None, "unless-stopped"),
        ("always", "unless-stopped"),
        ("no", "no"),
        ("on-failure", "on-failure"),
        ("on-failure:1", "no"),
        ("on-failure:2", "on-failure:1"),
        ("on-failure:10", "on-failure:9"),
    ],
)
def test_the_apps_restart_policy_becomes_the_engines(policy: str | None, engine_policy: str) -> None:
    """berthd's on-failure:N gives up after N failures; the engine's MaximumRetryCount counts restarts."""
    assert engine_restart_policy(policy) == engine_policy


def test_a_crash_looping_container_shows_backoff_and_its_restarts_growing(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    start_image_app(engine, "looper", command=CRASH)
    assert inspect(docker_client, "looper")["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"

    def backing_off() -> dict[str, Any] | None:
        row = row_of(engine, "looper")
        # the supervisor's state and the engine's, asked by the same report, agree
        waiting = row["state"] == "BACKOFF" and row["container_state"] == "restarting"
        return row if waiting and row["restarts"] > 0 else None

    first = wait_for(backing_off, timeout=30)
    assert isinstance(first, dict)
    assert first["last_exit_code"] == 4 and first["last_exit"] == "exited with code 4", first
    assert first["restart_policy"] == "always", first
    wait_for(lambda: row_of(engine, "looper")["restarts"] > first["restarts"], timeout=30)
    # the count is the engine's RestartCount (less a restart it is waiting to make), seen a moment ago
    row = row_of(engine, "looper")
    _, _, count = engine_state(docker_client, "looper")
    assert first["restarts"] < row["restarts"] <= count, (row, count)
    log = engine.call("logs looper").output
    assert "crashing" in log  # the container stays: its logs say why it exits


def test_ps_stop_ends_a_crash_loop_for_good(engine: Berthd, docker_client: docker.DockerClient) -> None:
    start_image_app(engine, "stopper", command=CRASH)
    wait_for(lambda: engine_state(docker_client, "stopper")[2] >= 2, timeout=30)
    stop = engine.call("ps:stop stopper")
    assert stop.ok, stop.output
    assert row_of(engine, "stopper")["state"] == "STOPPED"
    status, restarting, count = engine_state(docker_client, "stopper")
    assert (status, restarting) == ("exited", False)
    time.sleep(3 * WATCH_S)  # the engine's wait before its next restart had begun: it must not come
    assert engine_state(docker_client, "stopper") == ("exited", False, count)
    assert row_of(engine, "stopper")["state"] == "STOPPED"


def test_on_failure_2_ends_failed_after_two_failures(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    start_image_app(engine, "quitter", "--restart-policy", "on-failure:2", command=CRASH)
    wait_for(lambda: row_of(engine, "quitter")["state"] == "FAILED", timeout=30)
    row = row_of(engine, "quitter")
    assert row["restarts"] == 1, row  # two runs in all, as for a native process
    assert (row["last_exit_code"], row["restart_policy"]) == (4, "on-failure:2"), row
    assert engine_state(docker_client, "quitter") == ("exited", False, 1)
    assert inspect(docker_client, "quitter")["HostConfig"]["RestartPolicy"] == {
        "Name": "on-failure",
        "MaximumRetryCount": 1,
    }
    assert "FAILED" in engine.call("ps:report quitter").output


def test_a_healthy_container_stays_running_with_no_restarts(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    start_image_app(engine, "steady", command=HEALTHY)
    time.sleep(3 * WATCH_S)
    row = row_of(engine, "steady")
    assert (row["state"], row["restarts"], row["last_exit_code"]) == ("RUNNING", 0, None), row
    assert engine_state(docker_client, "steady") == ("running", False, 0)
    # a new policy reaches the running container: the engine is the one that applies it
    assert engine.call("ps:set steady restart-policy on-failure:3").ok
    assert inspect(docker_client, "steady")["HostConfig"]["RestartPolicy"] == {
        "Name": "on-failure",
        "MaximumRetryCount": 2,
    }


def test_a_restarted_berthd_finds_the_crash_looping_container_and_its_count(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    start_image_app(engine, "phoenix", command=CRASH)
    wait_for(lambda: row_of(engine, "phoenix")["restarts"] >= 2, timeout=30)
    container = inspect(docker_client, "phoenix")["Id"]
    engine.kill()  # SIGKILL: the engine keeps restarting the container meanwhile
    _, _, count = engine_state(docker_client, "phoenix")
    engine.start()

    def looping_again() -> dict[str, Any] | None:
        rows = engine.call("ps:report phoenix").data
        return rows[0] if rows and rows[0]["state"] == "BACKOFF" else None

    row = wait_for(looping_again, timeout=30)
    assert isinstance(row, dict)
    assert row["restarts"] >= count - 1 and row["last_exit_code"] == 4, (row, count)
    matching = docker_client.containers.list(all=True, filters={"name": "^/nc_app_phoenix$"})
    assert [c.id for c in matching] == [container]
    assert engine.call("ps:stop phoenix").ok
    assert engine_state(docker_client, "phoenix")[:2] == ("exited", False)


def test_a_stopped_container_takes_the_apps_new_policy_when_started_again(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    start_image_app(engine, "changer", command=HEALTHY)
    first = inspect(docker_client, "changer")["Id"]
    assert engine.call("ps:stop changer").ok
    assert engine.call("apps:set changer restart-policy no").ok
    assert engine.call("ps:start changer").ok
    attrs = inspect(docker_client, "changer")
    assert attrs["Id"] == first and attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert row_of(engine, "changer")["restart_policy"] == "no"
