"""Image apps as Docker Swarm services, on a single-node swarm on loopback (the shared test engine).

The swarm is joined here once and never left by a test: scripts/with-engine.sh leaves it (`swarm leave
--force`) when the whole run is over, so no test races another's leave. Plain containers of the other
Docker tests are not touched by a swarm; services here are named `berthd_swarm_*` and use the host network.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.daemon_proc import Berthd
from tests.docker_engine import BUSYBOX_IMAGE
from tests.test_daemons import NC_URL, socket_path
from tests.test_native_runner import wait_for

SECOND_IMAGE = "berth-test/busybox:2"
SERVE = ["sh", "-c", 'echo "swarm $APP_ID up"; exec sleep 3600']


@pytest.fixture(scope="session")
def swarm(docker_host: str, docker_client: docker.DockerClient) -> docker.DockerClient:
    """The test engine as a single-node swarm manager (joined once, under a lock: tests run in parallel)."""
    with (Path(socket_path(docker_host)).parent / "swarm.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if docker_client.info()["Swarm"]["LocalNodeState"] != "active":
            docker_client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        docker_client.images.get(BUSYBOX_IMAGE).tag(SECOND_IMAGE)
    return docker_client


@pytest.fixture
def manager(
    start_berthd: Callable[..., Berthd], docker_host: str, swarm: docker.DockerClient
) -> Iterator[Berthd]:
    berthd = start_berthd(extra_args=["--stop-timeout", "1"])
    answer = berthd.call(
        ["daemons:register", "cluster", "Cluster", "swarm-install", "http", socket_path(docker_host), NC_URL,
         "--set-default"]
    )  # fmt: skip
    assert answer.ok, answer.output
    yield berthd
    for app in [app["name"] for app in berthd.call("apps:list").data]:
        for service in swarm.services.list(filters={"name": f"berthd_swarm_{app}"}):
            with contextlib.suppress(docker.errors.APIError):
                service.remove()


def services_of(client: docker.DockerClient, app: str) -> list[Any]:
    return [s for s in client.services.list(filters={"label": f"berthd.app={app}"})]


def running_tasks(client: docker.DockerClient, app: str) -> int:
    (service,) = services_of(client, app)
    tasks = service.tasks(filters={"desired-state": "running"})
    return sum(1 for task in tasks if task["Status"]["State"] == "running")


def test_a_service_is_created_and_destroyed_leaving_nothing(
    manager: Berthd, swarm: docker.DockerClient
) -> None:
    answer = manager.call(["git:from-image", "web", BUSYBOX_IMAGE, "--", *SERVE])
    assert answer.ok, answer.output
    answer = manager.call("ps:start web")
    assert answer.ok, answer.output
    (service,) = services_of(swarm, "web")
    spec = service.attrs["Spec"]
    assert spec["TaskTemplate"]["ContainerSpec"]["Image"].startswith(BUSYBOX_IMAGE)
    env = dict(item.split("=", 1) for item in spec["TaskTemplate"]["ContainerSpec"]["Env"])
    assert env["APP_ID"] == "web" and env["NEXTCLOUD_URL"] == NC_URL
    update = spec["UpdateConfig"]
    assert update["FailureAction"] == "rollback" and update["Parallelism"] == 1 and update["Monitor"] > 0
    assert running_tasks(swarm, "web") == 1
    wait_for(lambda: "swarm web up" in manager.call("logs web").output)
    row = manager.call("ps:report web").data[0]
    assert row["tasks"][0]["state"] == "running" and row["tasks"][0]["desired_state"] == "running"
    assert manager.call("ps:stop web").ok
    assert service.reload() is None and service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
    assert manager.call("apps:destroy web --force").ok
    assert services_of(swarm, "web") == []


def test_a_rolling_update_to_a_second_tag(manager: Berthd, swarm: docker.DockerClient) -> None:
    assert manager.call(["git:from-image", "roll", BUSYBOX_IMAGE, "--", *SERVE]).ok
    assert manager.call("ps:start roll").ok
    (first,) = services_of(swarm, "roll")
    assert manager.call(["git:from-image", "roll", SECOND_IMAGE, "--", *SERVE]).ok

    def updated() -> bool:
        (service,) = services_of(swarm, "roll")
        image = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        return service.id == first.id and image.startswith(SECOND_IMAGE) and running_tasks(swarm, "roll") == 1

    wait_for(updated, timeout=60)


def test_a_restarted_berthd_finds_its_service(manager: Berthd, swarm: docker.DockerClient) -> None:
    assert manager.call(["git:from-image", "sticky", BUSYBOX_IMAGE, "--", *SERVE]).ok
    assert manager.call("ps:start sticky").ok
    (first,) = services_of(swarm, "sticky")
    manager.kill()
    manager.start()
    assert manager.call("ps:start sticky").ok
    assert [s.id for s in services_of(swarm, "sticky")] == [first.id]
