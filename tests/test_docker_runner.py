"""Image apps on the real test engine: the ExApp contract, health and heartbeat, re-attach, GPUs, logs."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import os
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.daemon_proc import Berthd
from tests.docker_engine import BUSYBOX_IMAGE
from tests.test_daemons import NC_URL, socket_path
from tests.test_native_runner import wait_for
from tests.test_sources import QuietHandler

# An ExApp in a few lines: it serves /heartbeat on APP_HOST:APP_PORT with busybox httpd.
EXAPP = [
    "sh", "-c",
    'mkdir -p /tmp/www && echo \'{"status":"ok"}\' > /tmp/www/heartbeat && '
    'echo "exapp $APP_ID on $APP_PORT" && exec httpd -f -p "$APP_HOST:$APP_PORT" -h /tmp/www',
]  # fmt: skip


@pytest.fixture
def exapp_ports(docker_host: str) -> Iterator[None]:
    """Tests whose ExApps listen on APP_PORT take turns: each test's berthd picks its ports from
    23000-23999 by itself, so two running side by side can pick the same one, and the second httpd
    cannot bind it (its container crash-loops, and a heartbeat check may reach the other's)."""
    with (Path(socket_path(docker_host)).parent / "exapp-ports.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def engine(exapp_ports: None, engine_berthd: Berthd) -> Berthd:
    """`engine_berthd`, for ExApps that listen on their port (the lock is taken first, released last)."""
    return engine_berthd


@pytest.fixture
def engine_berthd(
    start_berthd: Callable[..., Berthd], docker_host: str, docker_client: docker.DockerClient
) -> Iterator[Berthd]:
    """berthd with the test engine registered as the default deploy daemon; containers cleaned up.
    httpd as PID 1 ignores SIGTERM, so a short stop timeout keeps the engine's stops short."""
    berthd = start_berthd(extra_args=["--stop-timeout", "1"])
    answer = berthd.call(
        ["daemons:register", "local", "Local", "docker-install", "http", socket_path(docker_host), NC_URL,
         "--set-default"]
    )  # fmt: skip
    assert answer.ok, answer.output
    yield berthd
    remove_containers_of(berthd, docker_client)


def remove_containers_of(berthd: Berthd, client: docker.DockerClient) -> None:
    """This test's containers and volumes only: tests run in parallel on one engine."""
    apps = [app["name"] for app in berthd.call("apps:list").data]
    for app in apps:
        for container in client.containers.list(all=True, filters={"name": f"^/nc_app_{app}$"}):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            client.volumes.get(f"nc_app_{app}_data").remove(force=True)


def register_gpu_daemon(daemon: Berthd, docker_host: str, name: str, device: str) -> None:
    """A second daemon on the test engine, with a compute device."""
    answer = daemon.call(
        ["daemons:register", name, name.upper(), "docker-install", "http", socket_path(docker_host), NC_URL,
         "--compute_device", device]
    )  # fmt: skip
    assert answer.ok, answer.output


def deploy(daemon: Berthd, app: str, *options: str, command: list[str] | None = None) -> None:
    answer = daemon.call(["git:from-image", app, BUSYBOX_IMAGE, *options, "--", *(command or EXAPP)])
    assert answer.ok, answer.output


def inspect(client: docker.DockerClient, app: str) -> dict[str, Any]:
    return dict(client.api.inspect_container(f"nc_app_{app}"))


def test_an_image_app_follows_the_exapp_contract(engine: Berthd, docker_client: docker.DockerClient) -> None:
    engine.call(["apps:create", "exapp"])
    engine.call(["config:set", "exapp", "EXTRA=1", "APP_ID=not-overridden"])
    deploy(engine, "exapp", "--heartbeat", "--description", "My ExApp")
    answer = engine.call("ps:start exapp")
    assert answer.ok, answer.output
    attrs = inspect(docker_client, "exapp")
    env = attrs["Config"]["Env"]
    names = [item.split("=", 1)[0] for item in env]
    assert names[:9] == [
        "APP_ID", "APP_SECRET", "APP_DISPLAY_NAME", "APP_VERSION", "APP_HOST", "APP_PORT",
        "APP_PERSISTENT_STORAGE", "NEXTCLOUD_URL", "COMPUTE_DEVICE",
    ]  # fmt: skip
    values = dict(item.split("=", 1) for item in env)
    assert values["APP_ID"] == "exapp" and values["APP_DISPLAY_NAME"] == "My ExApp"
    assert values["APP_VERSION"] == "1" and values["APP_HOST"] == "127.0.0.1"
    assert 23000 <= int(values["APP_PORT"]) <= 23999
    assert values["APP_PERSISTENT_STORAGE"] == "/nc_app_exapp_data"
    assert values["NEXTCLOUD_URL"] == NC_URL and values["COMPUTE_DEVICE"] == "CPU"
    assert len(values["APP_SECRET"]) >= 32
    assert values["EXTRA"] == "1"
    assert attrs["Name"] == "/nc_app_exapp" and attrs["Config"]["Hostname"] == "exapp"
    assert attrs["HostConfig"]["NetworkMode"] == "host"
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    mounts = {m["Name"]: m["Destination"] for m in attrs["Mounts"]}
    assert mounts == {"nc_app_exapp_data": "/nc_app_exapp_data"}
    # the app's secret never shows
    assert values["APP_SECRET"] not in engine.call("apps:info exapp").output
    assert values["APP_SECRET"] not in engine.log()
    row = engine.call("ps:report exapp").data[0]
    assert row["state"] == "RUNNING" and row["container_state"] == "running"
    assert row["container_id"] == attrs["Id"][:12]
    wait_for(lambda: "exapp exapp on" in engine.call("logs exapp").output)


def test_stop_restart_destroy_and_the_volume(engine: Berthd, docker_client: docker.DockerClient) -> None:
    deploy(engine, "cycle")
    assert engine.call("ps:start cycle").ok
    first = inspect(docker_client, "cycle")["Id"]
    assert engine.call("ps:stop cycle").ok
    assert inspect(docker_client, "cycle")["State"]["Status"] == "exited"
    assert engine.call("ps:report cycle").data[0]["state"] == "STOPPED"
    assert engine.call("ps:start cycle").ok
    assert inspect(docker_client, "cycle")["Id"] == first  # the same container, started again
    assert engine.call("ps:restart cycle").ok
    assert inspect(docker_client, "cycle")["State"]["Status"] == "running"
    assert engine.call("apps:destroy cycle --force --keep-data").ok
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get("nc_app_cycle")
    assert docker_client.volumes.get("nc_app_cycle_data")
    deploy(engine, "cycle")
    engine.call("ps:start cycle")
    assert engine.call("apps:destroy cycle --force").ok
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get("nc_app_cycle_data")


def test_a_restarted_berthd_reattaches_and_makes_no_second_container(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    deploy(engine, "sticky")
    assert engine.call("ps:start sticky").ok
    container = inspect(docker_client, "sticky")["Id"]
    engine.kill()
    engine.start()
    wait_for(
        lambda: (
            engine.call("ps:report sticky").data
            and engine.call("ps:report sticky").data[0]["state"] == "RUNNING"
        )
    )
    assert engine.call("ps:start sticky").ok
    matching = docker_client.containers.list(all=True, filters={"name": "nc_app_sticky"})
    assert [c.id for c in matching] == [container]


def with_health_check(client: docker.DockerClient, image: str, test: list[str], retries: int) -> None:
    """`image`: the test image with a HEALTHCHECK committed on it, run every 200 ms."""
    base = client.containers.create(BUSYBOX_IMAGE, ["true"])
    repository, _, tag = image.rpartition(":")
    health = {"Test": test, "Interval": 200_000_000, "Retries": retries}
    try:
        client.api.commit(base.id, repository=repository, tag=tag, conf={"Healthcheck": health})
    finally:
        base.remove(force=True)


def test_a_failing_health_check_removes_the_container(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    # an image whose health check always fails, fast
    with_health_check(docker_client, "berth-test/unhealthy:1", ["CMD", "false"], retries=1)
    assert engine.call(["git:from-image", "sick", "berth-test/unhealthy:1", "--", "sleep", "1000"]).ok
    started = engine.call("ps:start sick")
    wait_for(lambda: engine.call("ps:report sick").data[0]["state"] in ("BACKOFF", "FAILED"), timeout=30)
    report = engine.call("ps:report sick").data[0]
    assert "health check failed" in str(report["last_error"]), (started.output, report)
    assert not docker_client.containers.list(all=True, filters={"name": "^/nc_app_sick$"})
    engine.call("ps:stop sick")


def test_cuda_daemon_asks_for_nvidia_gpus(
    engine: Berthd, docker_host: str, docker_client: docker.DockerClient
) -> None:
    register_gpu_daemon(engine, docker_host, "gpu", "cuda")
    deploy(engine, "cuda-app", "--daemon", "gpu")
    assert engine.call("ps:start cuda-app").ok
    attrs = inspect(docker_client, "cuda-app")
    [request] = attrs["HostConfig"]["DeviceRequests"]
    assert request["Driver"] == "nvidia" and request["Count"] == -1
    assert request["Capabilities"] == [["compute", "utility"]]
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["COMPUTE_DEVICE"] == "CUDA"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"


@pytest.fixture
def amd_devices() -> Iterator[None]:
    """/dev/kfd and /dev/dri as on a ROCm host (character devices like /dev/null), made only if missing."""
    if os.geteuid() != 0:
        pytest.skip("making device nodes needs root")
    made: list[Path] = []
    for path in (Path("/dev/kfd"), Path("/dev/dri/renderD128")):
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            made.append(path)
    yield
    for path in made:
        path.unlink()
    with contextlib.suppress(OSError):
        Path("/dev/dri").rmdir()


def test_rocm_daemon_passes_the_amd_devices(
    engine: Berthd, docker_host: str, docker_client: docker.DockerClient, amd_devices: None
) -> None:
    register_gpu_daemon(engine, docker_host, "amd", "rocm")
    deploy(engine, "rocm-app", "--daemon", "amd")
    assert engine.call("ps:start rocm-app").ok
    devices = inspect(docker_client, "rocm-app")["HostConfig"]["Devices"]
    assert {(d["PathOnHost"], d["PathInContainer"]) for d in devices} == {
        ("/dev/kfd", "/dev/kfd"),
        ("/dev/dri", "/dev/dri"),
    }


def test_manual_install_checks_the_heartbeat(exapp_ports: None, berthd: Berthd, tmp_path: Path) -> None:
    """berthd starts nothing: ps:start waits for the app's heartbeat at its address, ps:report tells."""
    assert berthd.call(["daemons:register", "manual", "Manual", "manual-install", "http", "null", NC_URL]).ok
    assert berthd.call(["git:from-image", "handmade", BUSYBOX_IMAGE, "--daemon", "manual"]).ok
    assert berthd.call("ps:start handmade").ok
    assert berthd.call("ps:report handmade").data[0]["state"] in ("STARTING", "BACKOFF")  # nobody answers yet
    (tmp_path / "heartbeat").write_text('{"status": "ok"}')
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", _exapp_port(berthd, "handmade")), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for(lambda: berthd.call("ps:report handmade").data[0]["state"] == "RUNNING", timeout=60)
        assert berthd.call("ps:report handmade").data[0]["answers"] is True
    finally:
        server.shutdown()
        server.server_close()
    berthd.call("ps:stop handmade")


def _exapp_port(daemon: Berthd, app: str) -> int:
    import sqlite3

    with sqlite3.connect(daemon.data_dir / "berthd.db") as conn:
        row = conn.execute("SELECT port FROM exapps WHERE app = ?", (app,)).fetchone()
    assert row, "berthd gave the app no port"
    return int(row[0])


@pytest.mark.parametrize("image", ["busybox latest", "UPPER/case", "x:tag with space", "-rm", ""])
def test_bad_image_references_are_refused(engine: Berthd, image: str) -> None:
    answer = engine.call(["git:from-image", "badimage", image])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert "invalid image reference" in answer.output


def test_an_unregistered_daemon_is_refused(engine: Berthd) -> None:
    answer = engine.call(["git:from-image", "lost", BUSYBOX_IMAGE, "--daemon", "nowhere"])
    assert (answer.ok, answer.error) == (False, "not_found")
    assert "nowhere" in answer.output
    assert engine.call("apps:list").data == []


def test_an_image_neither_on_the_engine_nor_pullable_is_refused_at_once(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    deploy(engine, "ghost")
    before = engine.call("apps:info ghost").data["source_detail"]
    answer = engine.call(["git:from-image", "ghost", "berth-test/does-not-exist:1"])
    assert (answer.ok, answer.error) == (False, "unavailable"), answer
    assert "berth-test/does-not-exist:1 is not on the engine, and it cannot be pulled" in answer.output
    assert engine.call("apps:info ghost").data["source_detail"] == before  # the app keeps its image
    new = engine.call(["git:from-image", "phantom", "berth-test/does-not-exist:1"])
    assert new.error == "unavailable"
    assert "phantom" not in engine.call("apps:list").output  # nothing made for nothing
    assert not docker_client.containers.list(all=True, filters={"name": "nc_app_phantom"})


def test_an_engine_gone_mid_test_is_unavailable(
    berthd: Berthd, tmp_path: Path, start_berthd: Callable[..., Berthd]
) -> None:
    dead = tmp_path / "dead.sock"
    assert berthd.call(
        ["daemons:register", "gone", "Gone", "docker-install", "http", str(dead), NC_URL, "--set-default"]
    ).ok
    answer = berthd.call(["git:from-image", "orphan", BUSYBOX_IMAGE])
    assert (answer.ok, answer.error) == (False, "unavailable"), answer
    assert "deploy daemon gone is unavailable" in answer.output and answer.data == {"daemon": "gone"}
    assert berthd.call("ping").output == "pong"
    assert berthd.call("apps:list").data == []  # no app that could not run


def test_placement_picks_the_daemon_whose_engine_meets_the_requirements(
    engine: Berthd, docker_host: str, docker_client: docker.DockerClient
) -> None:
    register_gpu_daemon(engine, docker_host, "gpu", "cuda")
    answer = engine.call(["git:from-image", "placed", BUSYBOX_IMAGE, "--require", "requires_gpu=true"])
    assert answer.ok, answer.output
    info = engine.call("apps:info placed").data
    assert info["daemon"] == "gpu"
    placement = info["source_detail"]["placement"]
    assert placement.startswith("gpu meets every requirement")
    assert "local (no GPU: needs one, engine of local has none)" in placement
    # no requirement of the GPU kind: the default daemon comes first
    assert engine.call(["git:from-image", "plain", BUSYBOX_IMAGE, "--require", "min_cpu_cores=1"]).ok
    assert engine.call("apps:info plain").data["daemon"] == "local"
    # nothing fits: every daemon's reason
    refused = engine.call(
        ["git:from-image", "nowhere", BUSYBOX_IMAGE, "--require", "min_memory_mb=100000000"]
    )
    assert refused.error == "incompatible"
    assert "local: not enough memory available" in refused.output
    assert "gpu: not enough memory available" in refused.output
    assert (
        engine.call(
            [
                "git:from-image",
                "amd",
                BUSYBOX_IMAGE,
                "--require",
                "requires_gpu=true",
                "--require",
                "gpu_vendor=amd",
            ]
        ).error
        == "incompatible"
    )


def test_the_engine_going_away_mid_test(
    exapp_ports: None, start_berthd: Callable[..., Berthd], docker_host: str, tmp_path: Path
) -> None:
    """The daemon reaches the engine through socat; socat stops (the engine, as berthd sees it, is gone)."""
    proxy = tmp_path / "engine-proxy.sock"
    socat = subprocess.Popen(
        ["socat", f"UNIX-LISTEN:{proxy},fork", f"UNIX-CONNECT:{socket_path(docker_host)}"],
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its forked children carry open connections: they go too
    )
    daemon = start_berthd(extra_args=["--stop-timeout", "1"])
    try:
        wait_for(proxy.exists)
        assert daemon.call(
            [
                "daemons:register",
                "flaky",
                "Flaky",
                "docker-install",
                "http",
                str(proxy),
                NC_URL,
                "--set-default",
            ]
        ).ok
        deploy(daemon, "midway")
        assert daemon.call("ps:start midway").ok
        os.killpg(socat.pid, signal.SIGTERM)
        socat.wait(10)
        proxy.unlink(missing_ok=True)
        check = daemon.call("daemons:check flaky")
        assert (check.ok, check.error) == (False, "unavailable")
        assert "flaky" in check.output
        report = daemon.call("ps:report midway")
        assert report.ok and "unavailable" in str(report.data[0].get("engine", ""))
        assert daemon.call("ping").output == "pong"
        stop = daemon.call("ps:stop midway")
        assert (stop.ok, stop.error) == (False, "unavailable")  # never "done" while the container may run
        assert daemon.call("apps:create still-serving").ok
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(socat.pid, signal.SIGKILL)
        socat.wait()
        client = docker.DockerClient(base_url=docker_host)
        for container in client.containers.list(all=True, filters={"name": "nc_app_midway"}):
            container.remove(force=True)


def test_capabilities_report_the_default_daemons_engine(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    engine.stop()
    engine.start()  # the first probe of a berthd that has a default deploy daemon
    data = engine.call("system:capabilities").data
    assert data["has_docker"] is True
    assert data["docker_version"] == docker_client.version()["Version"]


def test_an_image_app_renamed_with_force_gets_a_new_container_and_keeps_its_volume(
    engine: Berthd, docker_client: docker.DockerClient
) -> None:
    deploy(engine, "imgold")
    assert engine.call("ps:start imgold").ok
    refused = engine.call("apps:rename imgold imgnew")
    assert refused.error == "invalid_argument" and "--force" in refused.output, refused.output
    answer = engine.call("apps:rename imgold imgnew --force")
    assert answer.ok, answer.output
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get("nc_app_imgold")
    wait_for(lambda: engine.call("ps:report imgnew").data[0]["state"] == "RUNNING")
    attrs = inspect(docker_client, "imgnew")
    assert {m["Name"]: m["Destination"] for m in attrs["Mounts"]} == {
        "nc_app_imgold_data": "/nc_app_imgold_data"
    }
    values = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert values["APP_ID"] == "imgnew" and values["APP_PERSISTENT_STORAGE"] == "/nc_app_imgold_data"
    rebuilt = engine.call("ps:rebuild imgnew")
    assert rebuilt.ok, rebuilt.output
    wait_for(lambda: engine.call("ps:report imgnew").data[0]["state"] == "RUNNING")
    assert inspect(docker_client, "imgnew")["Id"] != attrs["Id"]  # a new container, the same volume
    assert engine.call("apps:destroy imgnew --force").ok
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get("nc_app_imgold_data")
