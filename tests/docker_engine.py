"""The test run's private Docker engine, started by scripts/with-engine.sh, as pytest fixtures.

`docker_host` is the engine's URL; a test that asks for it (or for `docker_client`) skips when the run
has no engine, with the reason scripts/with-engine.sh gave, and fails instead under BERTH_REQUIRE_DOCKER=1.
Containers go in `network_mode="host"` or `"none"`: the engine has no bridge (see shared/TESTING.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

BUSYBOX_IMAGE = "berth-test/busybox:1"
"""A busybox-static image (sh, echo, sleep, cat, httpd, wget, ... in /bin) imported by with-engine.sh."""

DOCKER_HOST_VAR = "BERTH_TEST_DOCKER_HOST"
UNAVAILABLE_VAR = "BERTH_TEST_DOCKER_UNAVAILABLE"
REQUIRE_VAR = "BERTH_REQUIRE_DOCKER"


@pytest.fixture(scope="session")
def docker_host() -> str:
    """The private engine's URL, `unix:///tmp/berth-engine.XXXX/docker.sock`."""
    host = os.environ.get(DOCKER_HOST_VAR)
    if host:
        return host
    reason = os.environ.get(
        UNAVAILABLE_VAR, f"{DOCKER_HOST_VAR} is not set: run the tests through scripts/with-engine.sh"
    )
    message = f"no Docker engine: {reason}"
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail(f"{message} ({REQUIRE_VAR}=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    """A Docker SDK client on the private engine, shared by the session."""
    client = docker.DockerClient(base_url=docker_host)
    try:
        yield client
    finally:
        client.close()
