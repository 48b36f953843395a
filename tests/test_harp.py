"""Deploy daemons through HaRP: Docker ExApps made by HaRP on the real test engine, Kubernetes ExApps on
HaRP's Kubernetes backend (kept as records by the tests' HaRP), manual-install ExApps, and HaRP's errors.

Every test holds every request berthd sent against HaRP's protocol (`tests.harp_server.PROTOCOL`)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import io
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from berthd.runners.harp.client import TIMEOUT_S
from tests.daemon_proc import Berthd
from tests.docker_engine import BUSYBOX_IMAGE
from tests.harp_server import (
    CLUSTER_IP,
    LOAD_BALANCER_INGRESS,
    NODE_ADDRESS,
    FakeHarp,
    k8s_name,
    protocol_drift,
)
from tests.test_daemons import NC_URL, socket_path
from tests.test_native_runner import wait_for
from tests.test_sources import QuietHandler

HARP_IMAGE = "berth-test/harp-exapp:1"
"""The test image with an ExApp as its own command: HaRP's create takes none. It serves /heartbeat on
APP_HOST:APP_PORT and says where it listens and whether it has its FRP settings."""
EXAPP_CMD = (
    'mkdir -p /tmp/www && echo \'{"status":"ok"}\' > /tmp/www/heartbeat && '
    'echo "exapp $APP_ID on $APP_PORT frp $HP_FRP_ADDRESS:$HP_FRP_PORT" && '
    'exec httpd -f -p "$APP_HOST:$APP_PORT" -h /tmp/www'
)

# The seed's and AppAPI's example lines, with HaRP's host and key the tests' own
SEED_DOCKER = ["harp_proxy_docker", "Harp Proxy (Docker)", "docker-install", "http", "{host}", NC_URL,
               "--net", "nextcloud", "--harp", "--harp_frp_address", "appapi-harp:8782",
               "--harp_shared_key", "{key}", "--set-default", "--compute_device=cuda"]  # fmt: skip
SEED_HOST = ["harp_proxy_host", "Harp Proxy (Host)", "docker-install", "http", "{host}", NC_URL,
             "--harp", "--harp_frp_address", "localhost:8782", "--harp_shared_key", "{key}", "--set-default"]  # fmt: skip
SEED_MANUAL = ["manual_install_harp", "Harp Manual Install", "manual-install", "http", "{host}", NC_URL,
               "--net", "nextcloud", "--harp", "--harp_frp_address", "appapi-harp:8782",
               "--harp_shared_key", "{key}"]  # fmt: skip
HOST_NOT_DEFAULT = SEED_HOST[:-1]
"""The seed's host line, not made the default: berthd's capability probe asks the default daemon too."""
K8S_PLAIN = ["k8s_daemon", "Kubernetes HaRP", "kubernetes-install", "http", "{host}", NC_URL,
             "--harp", "--harp_shared_key", "{key}", "--k8s"]  # fmt: skip
K8S_NODEPORT = ["k8s_daemon_nodeport", "K8s NodePort", "kubernetes-install", "http", "{host}", NC_URL,
                "--harp", "--harp_shared_key", "{key}", "--k8s", "--k8s_expose_type=nodeport",
                "--k8s_upstream_host=k8s-node.example.com"]  # fmt: skip
K8S_LB = ["k8s_daemon_lb", "K8s LoadBalancer", "kubernetes-install", "http", "{host}", NC_URL,
          "--harp", "--harp_shared_key", "{key}", "--k8s", "--k8s_expose_type=loadbalancer"]  # fmt: skip


def line(words: list[str], harp: FakeHarp, key: str | None = None) -> list[str]:
    """`daemons:register` with an example line, on the tests' HaRP."""
    return ["daemons:register"] + [
        w.replace("{host}", harp.url).replace("{key}", key or harp.shared_key) for w in words
    ]


@pytest.fixture(scope="session")
def harp_image(docker_client: docker.DockerClient, docker_host: str) -> str:
    """Built once per engine (a lock: tests run in parallel), from the busybox image, offline."""
    dockerfile = f'FROM {BUSYBOX_IMAGE}\nCMD ["sh", "-c", {json.dumps(EXAPP_CMD)}]\n'
    with (Path(socket_path(docker_host)).parent / "harp-image.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.get(HARP_IMAGE)
            return HARP_IMAGE
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=HARP_IMAGE, rm=True)
    return HARP_IMAGE


@pytest.fixture
def exapp_ports(docker_host: str) -> Iterator[None]:
    """ExApps that listen on APP_PORT take turns with the Docker runner's tests (the same lock)."""
    with (Path(socket_path(docker_host)).parent / "exapp-ports.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def harp(docker_host: str) -> Iterator[FakeHarp]:
    server = FakeHarp(shared_key="harp-" + secrets.token_hex(12), docker_host=docker_host).start()
    yield server
    server.stop()


@pytest.fixture
def k8s_harp(docker_host: str) -> Iterator[FakeHarp]:
    server = FakeHarp(
        shared_key="harp-" + secrets.token_hex(12), docker_host=docker_host, kubernetes=True
    ).start()
    yield server
    server.stop()


@pytest.fixture
def harp_berthd(
    start_berthd: Callable[..., Berthd], harp: FakeHarp, docker_client: docker.DockerClient
) -> Iterator[Berthd]:
    """berthd with the seed's host-network HaRP line registered as its default daemon."""
    berthd = start_berthd(extra_args=["--stop-timeout", "1"])
    answer = berthd.call(line(SEED_HOST, harp))
    assert answer.ok, answer.output
    yield berthd
    for app in [app["name"] for app in berthd.call("apps:list").data]:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.containers.get(f"nc_app_{app}").remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            docker_client.volumes.get(f"nc_app_{app}_data").remove(force=True)


@dataclass(frozen=True)
class OnHarp:
    """berthd with a HaRP Docker daemon as its default, the test engine behind it, the ExApp image."""

    berthd: Berthd
    harp: FakeHarp
    client: docker.DockerClient
    image: str


@pytest.fixture
def on(
    exapp_ports: None,
    harp_image: str,
    harp_berthd: Berthd,
    harp: FakeHarp,
    docker_client: docker.DockerClient,
) -> OnHarp:
    return OnHarp(harp_berthd, harp, docker_client, harp_image)


def assert_faithful(harp: FakeHarp) -> None:
    assert harp.requests, "berthd sent HaRP nothing"
    assert protocol_drift(harp.calls(), harp.shared_key) == []


def env_of(client: docker.DockerClient, app: str) -> dict[str, str]:
    attrs = client.api.inspect_container(f"nc_app_{app}")
    return dict(item.split("=", 1) for item in attrs["Config"]["Env"])


def _send(harp: FakeHarp, path: str, body: object, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{harp.url}/exapps/app_api{path}", json.dumps(body).encode(), headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_tests_harp_refuses_and_flags_what_harp_would_not_take(harp: FakeHarp) -> None:
    """The check the other tests rely on can fail: HaRP's answers to bad requests, and the drift found."""
    key = {"harp-shared-key": harp.shared_key}
    docker_call = {**key, "docker-engine-port": "24000"}
    assert _send(harp, "/info", {}, {})[0] == 401
    assert _send(harp, "/docker/exapp/exists", {"name": "x"}, key) == (
        400,
        "Missing 'docker-engine-port' header.",
    )
    assert _send(harp, "/docker/exapp/create", {"name": "x"}, docker_call)[0] == 400  # no image_id
    assert (
        _send(harp, "/k8s/exapp/exists", {"name": "x"}, docker_call)[0] == 403
    )  # sent to the engine: denied
    assert _send(harp, "/exapp_storage/x", {"exapp_token": "t"}, key)[0] == 400
    drift = protocol_drift(harp.calls(), harp.shared_key)
    assert "POST /info: no harp-shared-key or a wrong one" in drift
    assert "POST /docker/exapp/exists: docker-engine-port missing" in drift
    assert "POST /docker/exapp/create: missing ['image_id', 'network_mode']" in drift
    assert "POST /k8s/exapp/exists: docker-engine-port sent" in drift
    harp.requests.clear()
    assert _send(harp, "/k8s/exapp/exists", {"name": "x", "namespace": "n"}, key)[0] == 503  # no Kubernetes
    assert protocol_drift(harp.calls(), harp.shared_key) == [
        "POST /k8s/exapp/exists: keys HaRP does not know ['namespace']"
    ]


# registration


def test_the_seeds_and_appapis_harp_lines_register(berthd: Berthd, harp: FakeHarp) -> None:
    for words in (SEED_DOCKER, SEED_HOST, SEED_MANUAL, K8S_PLAIN, K8S_NODEPORT, K8S_LB):
        answer = berthd.call(line(words, harp))
        assert answer.ok, answer.output
        assert harp.shared_key not in answer.output
    listed = {d["name"]: d for d in berthd.call("daemons:list").data}
    assert {n: d["deploy_id"] for n, d in listed.items()} == {
        "harp_proxy_docker": "docker-install", "harp_proxy_host": "docker-install",
        "manual_install_harp": "manual-install", "k8s_daemon": "kubernetes-install",
        "k8s_daemon_nodeport": "kubernetes-install", "k8s_daemon_lb": "kubernetes-install",
    }  # fmt: skip
    k8s = listed["k8s_daemon_nodeport"]["deploy_config"]
    assert k8s["kubernetes"] == {
        "expose_type": "nodeport", "node_port": None, "upstream_host": "k8s-node.example.com",
        "external_traffic_policy": None, "load_balancer_ip": None, "node_address_type": "InternalIP",
    }  # fmt: skip
    assert k8s["net"] == "bridge" and k8s["harp"]["exapp_direct"] is True and k8s["harp"]["frp_address"] == ""
    assert k8s["harp"]["shared_key"] == "***" and k8s["haproxy_password"] == "***"
    assert listed["k8s_daemon"]["deploy_config"]["kubernetes"]["expose_type"] == "clusterip"
    assert listed["harp_proxy_docker"]["deploy_config"]["kubernetes"] is None
    table = berthd.call("daemons:list").output
    assert harp.shared_key not in table
    rows = {
        r.split("|")[2].strip(): [c.strip() for c in r.strip("|").split("|")]
        for r in table.splitlines()[4:-1]
    }
    assert rows["k8s_daemon_lb"][3] == "kubernetes-install" and rows["k8s_daemon_lb"][-1] == "loadbalancer"
    assert rows["harp_proxy_host"][7:] == ["yes", "localhost:8782", "24000", "no", "(none)"]
    assert harp.shared_key not in berthd.log()
    assert harp.requests == []  # registering asks HaRP nothing


def test_k8s_forces_the_kubernetes_deploy_id(berthd: Berthd, harp: FakeHarp) -> None:
    words = line(K8S_PLAIN, harp)
    words[3] = "docker-install"
    answer = berthd.call(words)
    assert answer.ok, answer.output
    assert 'Note: --k8s flag detected. Overriding accepts-deploy-id to "kubernetes-install".' in answer.output
    assert berthd.call("daemons:list").data[0]["deploy_id"] == "kubernetes-install"


K8S = [
    "daemons:register",
    "k",
    "K",
    "kubernetes-install",
    "http",
    "harp:8780",
    NC_URL,
    "--harp_shared_key",
    "s",
]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--k8s"], "Kubernetes daemon (--k8s) requires --harp flag. K8s always uses HaRP."),
        (["--harp"], "accepts-deploy-id kubernetes-install is a Kubernetes daemon: register it with --harp --k8s"),
        (["--harp", "--k8s", "--k8s_expose_type", "ingress"],
         'Invalid k8s_expose_type "ingress". Must be one of: nodeport, clusterip, loadbalancer, manual'),
        (["--harp", "--k8s", "--k8s_expose_type", "nodeport", "--k8s_node_port", "29999"],
         "--k8s_node_port must be between 30000 and 32767"),
        (["--harp", "--k8s", "--k8s_expose_type", "nodeport", "--k8s_node_port", "32768"],
         "--k8s_node_port must be between 30000 and 32767"),
        (["--harp", "--k8s", "--k8s_node_port", "30080"],
         "--k8s_node_port is only valid with --k8s_expose_type=nodeport"),
        (["--harp", "--k8s", "--k8s_load_balancer_ip", "10.0.0.1"],
         "--k8s_load_balancer_ip is only valid with --k8s_expose_type=loadbalancer"),
        (["--harp", "--k8s", "--k8s_expose_type", "manual"],
         "--k8s_upstream_host is required for --k8s_expose_type=manual"),
        (["--harp", "--k8s", "--k8s_external_traffic_policy", "Everywhere"],
         'Invalid k8s_external_traffic_policy "Everywhere". Must be one of: Cluster, Local'),
        (["--harp", "--k8s", "--k8s_node_address_type", "Hostname"],
         'Invalid k8s_node_address_type "Hostname". Must be one of: InternalIP, ExternalIP'),
    ],
)  # fmt: skip
def test_bad_kubernetes_registrations_are_refused_with_appapis_reason(
    berthd: Berthd, extra: list[str], reason: str
) -> None:
    answer = berthd.call([*K8S, *extra])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert reason in answer.output
    assert berthd.call("daemons:list").data == []  # nothing stored


# daemons:check


def test_check_reports_harps_and_dockers_versions(berthd: Berthd, harp: FakeHarp) -> None:
    assert berthd.call(line(HOST_NOT_DEFAULT, harp)).ok
    answer = berthd.call("daemons:check harp_proxy_host")
    assert answer.ok, answer.output
    assert answer.data["harp_version"] == "0.4.4"
    assert answer.data["docker_version"][0].isdigit()
    assert answer.output.startswith("Deploy daemon harp_proxy_host is reachable: HaRP 0.4.4, Docker ")
    assert [f"{r.method} {r.path}" for r in harp.calls()] == ["GET /info", "GET /_ping"]
    assert "docker-engine-port" not in harp.calls()[0].headers  # /info is HaRP's own
    assert_faithful(harp)


def test_an_old_harp_is_refused(berthd: Berthd, harp: FakeHarp) -> None:
    harp.version = "0.2.9"
    assert berthd.call(line(HOST_NOT_DEFAULT, harp)).ok
    answer = berthd.call("daemons:check harp_proxy_host")
    assert answer.error == "unavailable"
    assert "HaRP 0.2.9 is too old: 0.3.0 or later" in answer.output


def test_check_of_a_kubernetes_daemon_tells_whether_harp_reaches_the_cluster(
    berthd: Berthd, k8s_harp: FakeHarp
) -> None:
    assert berthd.call(line(K8S_PLAIN, k8s_harp)).ok
    answer = berthd.call("daemons:check k8s_daemon")
    assert answer.ok, answer.output
    assert answer.data["kubernetes_reachable"] is True and answer.data["harp_version"] == "0.4.4"
    k8s_harp.k8s_reachable = False
    down = berthd.call("daemons:check k8s_daemon")
    assert down.error == "unavailable"
    assert "HaRP cannot reach the Kubernetes API server (https://k8s.test:6443)" in down.output
    k8s_harp.kubernetes = False
    assert "Kubernetes backend is disabled in HaRP" in berthd.call("daemons:check k8s_daemon").output
    assert [r.path for r in k8s_harp.calls()] == ["/info"] * 3
    assert_faithful(k8s_harp)


def test_a_wrong_key_is_said_to_be_wrong_and_never_shown(berthd: Berthd, harp: FakeHarp) -> None:
    wrong = "wrong-" + secrets.token_hex(12)
    assert berthd.call(line(HOST_NOT_DEFAULT, harp, key=wrong)).ok
    answer = berthd.call("daemons:check harp_proxy_host")
    assert answer.error == "unavailable"
    assert answer.output == (
        "deploy daemon harp_proxy_host is unavailable: HaRP refused the shared key (401): wrong --harp_shared_key?"
    )
    assert wrong not in berthd.log() and harp.shared_key not in berthd.log()
    assert [r.status for r in harp.calls()] == [401]


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, "unavailable"), (504, "timeout"), (400, "invalid_argument"), (404, "not_found")],
)
def test_harps_error_answers_become_berthds(berthd: Berthd, harp: FakeHarp, status: int, error: str) -> None:
    assert berthd.call(line(HOST_NOT_DEFAULT, harp)).ok
    harp.fail_once("/info", status, f"HaRP says {status}")
    answer = berthd.call("daemons:check harp_proxy_host")
    assert (answer.ok, answer.error) == (False, "unavailable")  # a check says why the daemon cannot be used
    assert f"HaRP says {status}" in answer.output
    harp.fail_once("/docker/exapp/remove", status, f"HaRP says {status}")
    assert berthd.call(["git:from-image", "failing", HARP_IMAGE, "--daemon", "harp_proxy_host"]).ok
    destroyed = berthd.call("apps:destroy failing --force")
    assert (destroyed.ok, destroyed.error) == (False, error)
    assert f"HaRP says {status}" in destroyed.output


def test_a_harp_that_does_not_answer_is_given_up_on(berthd: Berthd, harp: FakeHarp) -> None:
    """Every call has a timeout: a HaRP that accepts and stays silent holds no command for ever."""
    assert berthd.call(line(HOST_NOT_DEFAULT, harp)).ok
    harp.hang_once("/info", TIMEOUT_S + 10)
    started = time.monotonic()
    with berthd.client(timeout=TIMEOUT_S + 30) as client:
        answer = client.call("daemons:check harp_proxy_host")
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 8
    assert answer.error == "unavailable"
    assert answer.output.endswith("HaRP (harp_proxy_host) did not answer in time")
    assert berthd.call("ping").output == "pong"


def test_harp_down_is_unavailable_and_berthd_still_serves(berthd: Berthd, harp: FakeHarp) -> None:
    assert berthd.call(line(HOST_NOT_DEFAULT, harp)).ok
    harp.stop()
    answer = berthd.call("daemons:check harp_proxy_host")
    assert answer.error == "unavailable"
    assert f"cannot connect to HaRP at http://{harp.url}/exapps/app_api" in answer.output
    deploy = berthd.call(["git:from-image", "away", HARP_IMAGE, "--daemon", "harp_proxy_host"])
    assert deploy.error == "unavailable"
    assert berthd.call("ping").output == "pong"
    assert berthd.call("apps:list").ok


# Docker ExApps through HaRP


def test_an_image_app_runs_through_harp_and_is_registered_in_exapp_storage(on: OnHarp) -> None:
    berthd, harp, docker_client, harp_image = on.berthd, on.harp, on.client, on.image
    answer = berthd.call(
        ["git:from-image", "viaharp", harp_image, "--heartbeat", "--description", "Via HaRP"]
    )
    assert answer.ok, answer.output
    started = berthd.call("ps:start viaharp")
    assert started.ok, started.output
    wait_for(lambda: berthd.call("ps:report viaharp").data[0]["state"] == "RUNNING")
    env = env_of(docker_client, "viaharp")
    assert env["APP_ID"] == "viaharp" and env["APP_HOST"] == "127.0.0.1"
    assert (env["HP_FRP_ADDRESS"], env["HP_FRP_PORT"], env["HP_SHARED_KEY"]) == (
        "localhost",
        "8782",
        harp.shared_key,
    )
    attrs = docker_client.api.inspect_container("nc_app_viaharp")
    assert attrs["Config"]["Hostname"] == "viaharp" and attrs["HostConfig"]["NetworkMode"] == "host"
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert {m["Name"]: m["Destination"] for m in attrs["Mounts"]} == {
        "nc_app_viaharp_data": "/nc_app_viaharp_data"
    }
    # HaRP routes to it: its token, version, host (the FRP tunnel's end), port and routes
    assert harp.storage["viaharp"] == {
        "exapp_token": env["APP_SECRET"], "exapp_version": "1", "host": "127.0.0.1",
        "port": int(env["APP_PORT"]), "routes": [{"url": ".*", "access_level": 1, "bruteforce_protection": []}],
    }  # fmt: skip
    row = berthd.call("ps:report viaharp").data[0]
    assert row["runner"] == "harp" and row["container_state"] == "running"
    wait_for(lambda: "exapp viaharp on" in berthd.call("logs viaharp").output)
    paths = harp.paths()
    assert paths.index("POST /docker/exapp/exists") < paths.index("POST /docker/exapp/create")
    assert paths.index("POST /docker/exapp/start") < paths.index("POST /exapp_storage/viaharp")
    create = next(r for r in harp.calls("/docker/exapp/create"))
    assert create.body["name"] == "viaharp" and create.body["image_id"] == harp_image
    assert create.body["instance_id"] == "" and create.body["compute_device"] == "cpu"
    assert env["APP_SECRET"] not in berthd.log() and harp.shared_key not in berthd.log()

    assert berthd.call("ps:stop viaharp").ok
    assert "viaharp" not in harp.storage  # no longer routed
    assert docker_client.api.inspect_container("nc_app_viaharp")["State"]["Status"] == "exited"
    assert "POST /docker/exapp/stop" in harp.paths()
    assert_faithful(harp)


def test_a_restarted_berthd_finds_its_exapp_by_exists_and_makes_no_second(on: OnHarp) -> None:
    berthd, harp, docker_client, harp_image = on.berthd, on.harp, on.client, on.image
    assert berthd.call(["git:from-image", "sticky", harp_image]).ok
    assert berthd.call("ps:start sticky").ok
    wait_for(lambda: berthd.call("ps:report sticky").data[0]["state"] == "RUNNING")
    container = docker_client.api.inspect_container("nc_app_sticky")["Id"]
    berthd.kill()
    harp.storage.clear()  # HaRP restarted too: its exapp_storage is in memory
    berthd.start()
    wait_for(
        lambda: (
            bool(berthd.call("ps:report sticky").data)
            and berthd.call("ps:report sticky").data[0]["state"] == "RUNNING"
        )
    )
    assert [r.path for r in harp.calls("/docker/exapp/create")] == ["/docker/exapp/create"]  # once, ever
    assert [c.id for c in docker_client.containers.list(all=True, filters={"name": "nc_app_sticky"})] == [
        container
    ]
    assert "sticky" in harp.storage  # registered again
    assert harp.paths().count("POST /docker/exapp/exists") == 2
    assert_faithful(harp)


def test_a_new_image_replaces_the_exapp_and_keeps_its_data(on: OnHarp) -> None:
    berthd, harp, docker_client = on.berthd, on.harp, on.client
    newer = "berth-test/harp-exapp:2"
    docker_client.images.get(on.image).tag("berth-test/harp-exapp", "2")
    assert berthd.call(["git:from-image", "renewed", on.image]).ok
    assert berthd.call("ps:start renewed").ok
    wait_for(lambda: berthd.call("ps:report renewed").data[0]["state"] == "RUNNING")
    first = docker_client.api.inspect_container("nc_app_renewed")["Id"]
    assert berthd.call(["git:from-image", "renewed", newer]).ok  # it runs: redeployed at once
    wait_for(lambda: berthd.call("ps:report renewed").data[0]["state"] == "RUNNING")
    (container,) = docker_client.containers.list(all=True, filters={"name": "^/nc_app_renewed$"})
    assert container.id != first and container.attrs["Config"]["Image"] == newer
    assert harp.calls("/docker/exapp/remove")[0].body == {
        "name": "renewed",
        "instance_id": "",
        "remove_data": False,
    }
    assert harp.storage["renewed"]["exapp_version"] == "2"
    docker_client.volumes.get("nc_app_renewed_data")  # the data stayed
    assert_faithful(harp)


def test_destroy_keeps_or_removes_the_data(on: OnHarp) -> None:
    berthd, harp, docker_client, harp_image = on.berthd, on.harp, on.client, on.image
    for app in ("keeper", "dropper"):
        assert berthd.call(["git:from-image", app, harp_image]).ok
        assert berthd.call(f"ps:start {app}").ok
        wait_for(
            lambda app=app: (
                berthd.call(f"ps:report {app}").data[0]["state"] in ("RUNNING", "BACKOFF", "EXITED")
            )
        )
    assert berthd.call("apps:destroy keeper --force --keep-data").ok
    assert berthd.call("apps:destroy dropper --force").ok
    removes = {r.body["name"]: r.body["remove_data"] for r in harp.calls("/docker/exapp/remove")}
    assert removes == {"keeper": False, "dropper": True}
    assert docker_client.volumes.get("nc_app_keeper_data") is not None
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get("nc_app_dropper_data")
    for app in ("keeper", "dropper"):
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(f"nc_app_{app}")
        assert app not in harp.storage
    docker_client.volumes.get("nc_app_keeper_data").remove(force=True)
    assert_faithful(harp)


# Kubernetes ExApps through HaRP


@pytest.mark.parametrize(
    ("options", "upstream"),
    [
        ([], (CLUSTER_IP, None)),
        (["--k8s_expose_type", "nodeport", "--k8s_node_port", "30555", "--k8s_node_address_type", "ExternalIP",
          "--k8s_external_traffic_policy", "Local"], (NODE_ADDRESS["ExternalIP"], 30555)),
        (["--k8s_expose_type", "loadbalancer", "--k8s_load_balancer_ip", "203.0.113.50"], ("203.0.113.50", None)),
        (["--k8s_expose_type", "loadbalancer"], (LOAD_BALANCER_INGRESS, None)),
        (["--k8s_expose_type", "manual", "--k8s_upstream_host", "exapp.example.com"], ("exapp.example.com", None)),
    ],
)  # fmt: skip
def test_a_kubernetes_exapp_for_each_expose_type(
    berthd: Berthd, k8s_harp: FakeHarp, options: list[str], upstream: tuple[str, int | None]
) -> None:
    assert berthd.call([*line(K8S_PLAIN, k8s_harp), *options]).ok
    assert berthd.call(
        ["git:from-image", "kube", "registry.example.com/kube-app:2", "--daemon", "k8s_daemon"]
    ).ok
    started = berthd.call("ps:start kube")
    assert started.ok, started.output
    wait_for(lambda: berthd.call("ps:report kube").data[0]["state"] == "RUNNING")
    deployment = k8s_harp.deployments[k8s_name("kube")]
    assert deployment.replicas == 1 and deployment.image == "registry.example.com/kube-app:2"
    env = dict(item.split("=", 1) for item in deployment.env)
    assert env["APP_ID"] == "kube" and "HP_FRP_ADDRESS" not in env  # Kubernetes routes directly
    expose = k8s_harp.calls("/k8s/exapp/expose")[0].body
    assert expose["port"] == int(env["APP_PORT"])
    assert expose["expose_type"] == (options[1] if options else "clusterip")
    host, port = upstream
    stored = k8s_harp.storage["kube"]
    assert (stored["host"], stored["port"]) == (host, port or int(env["APP_PORT"]))
    assert stored["exapp_token"] == env["APP_SECRET"] and stored["exapp_version"] == "2"
    row = berthd.call("ps:report kube").data[0]
    assert row["runner"] == "harp-kubernetes" and row["upstream"] == f"{host}:{port or env['APP_PORT']}"
    assert "berthd does not see its output" in berthd.call("logs kube").output

    assert berthd.call("ps:stop kube").ok
    assert deployment.replicas == 0 and "kube" not in k8s_harp.storage
    assert berthd.call("apps:destroy kube --force --keep-data").ok
    assert k8s_harp.calls("/k8s/exapp/remove")[0].body == {
        "name": "kube",
        "instance_id": "",
        "remove_data": False,
    }
    assert k8s_name("kube") not in k8s_harp.deployments
    assert all("docker-engine-port" not in r.headers for r in k8s_harp.calls())
    assert_faithful(k8s_harp)


def test_a_restarted_berthd_finds_its_kubernetes_exapp(berthd: Berthd, k8s_harp: FakeHarp) -> None:
    assert berthd.call(line(K8S_LB, k8s_harp)).ok
    assert berthd.call(
        ["git:from-image", "kube2", "registry.example.com/kube-app:2", "--daemon", "k8s_daemon_lb"]
    ).ok
    assert berthd.call("ps:start kube2").ok
    wait_for(lambda: berthd.call("ps:report kube2").data[0]["state"] == "RUNNING")
    berthd.kill()
    berthd.start()
    wait_for(
        lambda: (
            bool(berthd.call("ps:report kube2").data)
            and berthd.call("ps:report kube2").data[0]["state"] == "RUNNING"
        )
    )
    assert len(k8s_harp.calls("/k8s/exapp/create")) == 1
    assert berthd.call("apps:destroy kube2 --force").ok
    assert k8s_harp.calls("/k8s/exapp/remove")[0].body["remove_data"] is True
    assert_faithful(k8s_harp)


# manual-install through HaRP


def test_a_manual_install_exapp_is_only_registered_in_exapp_storage(
    exapp_ports: None, berthd: Berthd, harp: FakeHarp, tmp_path: Path
) -> None:
    assert berthd.call(line(SEED_MANUAL, harp)).ok
    assert berthd.call(["git:from-image", "handmade", BUSYBOX_IMAGE, "--daemon", "manual_install_harp"]).ok
    assert berthd.call("ps:start handmade").ok
    (tmp_path / "heartbeat").write_text('{"status": "ok"}')
    port = _exapp_port(berthd, "handmade")
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wait_for(lambda: berthd.call("ps:report handmade").data[0]["state"] == "RUNNING", timeout=60)
        stored = harp.storage["handmade"]
        assert (stored["host"], stored["port"]) == ("127.0.0.1", port)
        assert berthd.call("ps:stop handmade").ok
        assert "handmade" not in harp.storage
    finally:
        server.shutdown()
        server.server_close()
    # HaRP checked before the deploy, then only its exapp_storage: there is no engine to ask
    assert {r.path for r in harp.calls()} == {"/info", "/exapp_storage/handmade"}
    assert_faithful(harp)


def _exapp_port(daemon: Berthd, app: str) -> int:
    import sqlite3

    with sqlite3.connect(daemon.data_dir / "berthd.db") as conn:
        row = conn.execute("SELECT port FROM exapps WHERE app = ?", (app,)).fetchone()
    assert row, "berthd gave the app no port"
    return int(row[0])
