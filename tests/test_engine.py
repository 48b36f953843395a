"""The private test engine runs busybox containers, without a network and in the host's."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
import uuid

import docker

from tests.docker_engine import BUSYBOX_IMAGE


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def fetch_when_served(url: str, timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_container_without_network_echoes_to_its_logs(docker_client: docker.DockerClient) -> None:
    marker = f"berth-marker-{uuid.uuid4().hex}"
    container = docker_client.containers.run(
        BUSYBOX_IMAGE, ["echo", marker], network_mode="none", detach=True
    )
    try:
        result = container.wait(timeout=30)
        assert result["StatusCode"] == 0
        assert container.logs().decode().strip() == marker
    finally:
        container.remove(force=True)


def test_httpd_in_host_network_serves_a_file_on_loopback(docker_client: docker.DockerClient) -> None:
    marker = f"berth-marker-{uuid.uuid4().hex}"
    port = free_loopback_port()
    script = f'mkdir -p /www && echo "$MARKER" > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www'
    container = docker_client.containers.run(
        BUSYBOX_IMAGE,
        ["sh", "-c", script],
        environment={"MARKER": marker},
        network_mode="host",
        detach=True,
    )
    try:
        try:
            body = fetch_when_served(f"http://127.0.0.1:{port}/index.html")
        except OSError as error:
            container.reload()
            raise AssertionError(
                f"httpd did not serve ({container.status}): {container.logs().decode()!r}"
            ) from error
        assert body.decode().strip() == marker
    finally:
        container.remove(force=True)
