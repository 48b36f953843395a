"""daemons:* (and AppAPI's app_api:daemon:*) against real engines: the test engine's socket, a Docker Socket
Proxy (Debian's haproxy with basic auth, in front of the engine's socket), a HaRP-shaped proxy (haproxy
checking HaRP's headers), and https with a certificate of the test's own."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.daemon_proc import Berthd

NC_URL = "http://nextcloud.local"


def register(berthd: Berthd, name: str, host: str, *extra: str, deploy_id: str = "docker-install") -> None:
    answer = berthd.call(
        ["daemons:register", name, f"Daemon {name}", deploy_id, "http", host, NC_URL, *extra]
    )
    assert answer.ok, answer.output


def socket_path(docker_host: str) -> str:
    assert docker_host.startswith("unix://")
    return docker_host.removeprefix("unix://")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"haproxy did not listen on {port}:\n{log.read_text()}")


@dataclass(frozen=True)
class Proxies:
    """haproxy in front of the test engine's socket, three ways."""

    password: str  # basic auth of the Docker Socket Proxy (user app_api_haproxy_user)
    dsp: str  # 127.0.0.1:PORT, http, basic auth
    harp_key: str  # HaRP's shared key
    harp: str  # 127.0.0.1:PORT, http, HaRP's /exapps/app_api prefix and headers
    tls: str  # localhost:PORT, https with a self-signed certificate, basic auth
    ca_file: Path  # that certificate


HAPROXY_CONFIG = """\
global
    maxconn 100

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

userlist app_api
    user app_api_haproxy_user insecure-password {password}

backend engine
    server docker {socket}

frontend docker_socket_proxy
    bind 127.0.0.1:{dsp_port}
    http-request auth realm docker unless {{ http_auth(app_api) }}
    default_backend engine

frontend docker_socket_proxy_tls
    bind 127.0.0.1:{tls_port} ssl crt {pem}
    http-request auth realm docker unless {{ http_auth(app_api) }}
    default_backend engine

frontend harp
    bind 127.0.0.1:{harp_port}
    http-request deny deny_status 401 unless {{ req.hdr(harp-shared-key) -m str {harp_key} }}
    http-request deny deny_status 400 unless {{ req.hdr(docker-engine-port) -m str 24000 }}
    http-request deny deny_status 404 unless {{ path_beg /exapps/app_api/ }}
    http-request replace-path ^/exapps/app_api(/.*) \\1
    default_backend engine
"""


@pytest.fixture(scope="module")
def proxies(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    haproxy = shutil.which("haproxy") or pytest.fail("haproxy is not installed (apt-get install haproxy)")
    openssl = shutil.which("openssl") or pytest.fail("openssl is not installed")
    folder = tmp_path_factory.mktemp("haproxy")
    cert, key, pem = folder / "cert.pem", folder / "key.pem", folder / "haproxy.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    password, harp_key = secrets.token_hex(16), secrets.token_hex(16)
    dsp_port, tls_port, harp_port = free_port(), free_port(), free_port()
    config = folder / "haproxy.cfg"
    config.write_text(
        HAPROXY_CONFIG.format(
            password=password,
            socket=socket_path(docker_host),
            dsp_port=dsp_port,
            tls_port=tls_port,
            harp_port=harp_port,
            pem=pem,
            harp_key=harp_key,
        )
    )
    log = folder / "haproxy.log"
    with open(log, "wb") as output:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=output, stderr=output)
    try:
        for port in (dsp_port, tls_port, harp_port):
            wait_listening(port, proc, log)
        yield Proxies(
            password,
            f"127.0.0.1:{dsp_port}",
            harp_key,
            f"127.0.0.1:{harp_port}",
            f"localhost:{tls_port}",
            cert,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The test engine's own socket


def test_register_list_check_unregister_on_the_engine_socket(
    berthd: Berthd, docker_host: str, docker_client: docker.DockerClient
) -> None:
    path = socket_path(docker_host)
    answer = berthd.call(
        ["daemons:register", "docker_local", "Docker Local", "docker-install", "http", path,
         "http://nextcloud.local/", "--net=host", "--compute_device=cuda", "--set-default"]
    )  # fmt: skip
    assert answer.ok, answer.output
    assert answer.output == "Daemon config successfully registered."

    listing = berthd.call("daemons:list")
    assert listing.output.splitlines()[0] == "Registered ExApp daemon configs:"
    header = listing.output.splitlines()[2]
    for column in ["Def", "Name", "Display name", "Deploy ID", "Protocol", "Host", "NC Url", "Is HaRP"]:
        assert f" {column} " in header
    row = listing.output.splitlines()[4]
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "*", "docker_local", "Docker Local", "docker-install", "http", path, "http://nextcloud.local",
        "no", "(none)", "(none)", "(none)", "(none)",
    ]  # fmt: skip
    (shown,) = listing.data
    assert shown["name"] == "docker_local" and shown["is_default"] is True and shown["host"] == path
    config = shown["deploy_config"]
    assert config["net"] == "host" and config["nextcloud_url"] == "http://nextcloud.local"
    assert config["computeDevice"] == {"id": "cuda", "label": "CUDA (NVIDIA)"}
    assert config["harp"] is None and config["docker_api_version"] == "auto"

    check = berthd.call("daemons:check docker_local")
    assert check.ok, check.output
    engine_version = docker_client.version()["Version"]
    assert check.data["docker_version"] == engine_version
    assert engine_version in check.output

    assert berthd.call("daemons:unregister docker_local").output == "Daemon config unregistered."
    empty = berthd.call("daemons:list")
    assert (empty.ok, empty.output, empty.data) == (True, "No registered daemon configs.", [])


def test_the_app_api_names_answer_too(berthd: Berthd, docker_host: str) -> None:
    path = socket_path(docker_host)
    answer = berthd.call(
        ["app_api:daemon:register", "local", "Local", "docker-install", "http", path, NC_URL]
    )
    assert answer.ok, answer.output
    assert [d["name"] for d in berthd.call("app_api:daemon:list").data] == ["local"]
    assert "app_api:daemon:register" in berthd.call("commands").output.splitlines()
    assert berthd.call("daemons:check local").ok
    assert berthd.call("app_api:daemon:unregister local").ok
    assert berthd.call("daemons:list").data == []


def test_a_pinned_api_version_and_additional_options(berthd: Berthd, docker_host: str) -> None:
    register(
        berthd,
        "pinned",
        socket_path(docker_host),
        "--option",
        "docker_api_version=1.41",
        "--option=OVERRIDE_APP_HOST=0.0.0.0",
    )
    (shown,) = berthd.call("daemons:list").data
    assert shown["deploy_config"]["docker_api_version"] == "1.41"
    assert shown["deploy_config"]["additional_options"] == {"OVERRIDE_APP_HOST": "0.0.0.0"}
    assert berthd.call("daemons:check pinned").ok


# Through proxies


def test_docker_socket_proxy_with_the_right_and_a_wrong_password(berthd: Berthd, proxies: Proxies) -> None:
    register(berthd, "dsp", proxies.dsp, "--haproxy_password", proxies.password)
    check = berthd.call("daemons:check dsp")
    assert check.ok, check.output
    assert check.data["docker_version"]

    register(berthd, "dsp_wrong", proxies.dsp, "--haproxy_password", "not-" + proxies.password)
    wrong = berthd.call("daemons:check dsp_wrong")
    assert (wrong.ok, wrong.error) == (False, "unavailable")
    assert wrong.output == (
        "deploy daemon dsp_wrong is unavailable: authentication failed (wrong haproxy password?)"
    )

    register(berthd, "dsp_none", proxies.dsp)
    assert berthd.call("daemons:check dsp_none").error == "unavailable"


def test_https_verifies_the_certificate(berthd: Berthd, proxies: Proxies) -> None:
    https = ["docker-install", "https", proxies.tls, NC_URL, "--haproxy_password", proxies.password]
    assert berthd.call(["daemons:register", "tls_unknown_ca", "TLS", *https]).ok
    refused = berthd.call("daemons:check tls_unknown_ca")
    assert refused.error == "unavailable"
    assert (
        refused.output == "deploy daemon tls_unknown_ca is unavailable: TLS certificate verification failed"
    )
    trusted = ["--option", f"tls_ca_file={proxies.ca_file}"]
    assert berthd.call(["daemons:register", "tls_trusted", "TLS", *https, *trusted]).ok
    check = berthd.call("daemons:check tls_trusted")
    assert check.ok, check.output


# manual-install


def test_manual_install_with_host_null(berthd: Berthd) -> None:
    answer = berthd.call(
        ["daemons:register", "manual_install", "Manual Install", "manual-install", "http", "null", NC_URL]
    )
    assert answer.ok, answer.output
    (shown,) = berthd.call("daemons:list").data
    assert shown["host"] is None and shown["deploy_id"] == "manual-install"
    assert "| null " in berthd.call("daemons:list").output
    check = berthd.call("daemons:check manual_install")
    assert check.ok and check.data["docker_version"] is None
    assert "there is no Docker engine to check" in check.output


def test_manual_install_with_a_port_warns_that_it_is_ignored(berthd: Berthd) -> None:
    answer = berthd.call(["daemons:register", "m", "M", "manual-install", "http", "localhost:9000", NC_URL])
    assert answer.ok
    assert answer.output.splitlines()[0].startswith("Warning: The host contains a port")


# Defaults and repeats


def test_default_daemon_is_at_most_one(berthd: Berthd, docker_host: str) -> None:
    path = socket_path(docker_host)
    assert berthd.call("daemons:default").output == "No default daemon config."
    register(berthd, "a", path, "--set-default")
    register(berthd, "b", path)
    assert [d["is_default"] for d in berthd.call("daemons:list").data] == [True, False]
    moved = berthd.call("daemons:default b")
    assert moved.ok and moved.output == "Daemon config b is now the default."
    assert [d["is_default"] for d in berthd.call("daemons:list").data] == [False, True]
    assert berthd.call("daemons:default").data == {"default": "b"}
    register(berthd, "c", path, "--set-default")
    assert [d["name"] for d in berthd.call("daemons:list").data if d["is_default"]] == ["c"]
    assert berthd.call("daemons:unregister c").ok
    assert berthd.call("daemons:default").data == {"default": None}


def test_registering_an_existing_name_is_skipped(berthd: Berthd, docker_host: str) -> None:
    register(berthd, "same", socket_path(docker_host))
    again = berthd.call(["daemons:register", "same", "Other", "manual-install", "http", "null", NC_URL])
    assert again.ok
    assert again.output == "Registration skipped, as the daemon config `same` already exists."
    (shown,) = berthd.call("daemons:list").data
    assert shown["deploy_id"] == "docker-install"


# Refusals


REGISTER = ["daemons:register", "d", "D", "docker-install", "http"]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["http://nextcloud-appapi-dsp:2375", NC_URL], "must not include a protocol"),
        (["tcp://127.0.0.1:2375", NC_URL], "must not include a protocol"),
        (["null", NC_URL], "only a manual-install daemon has no host"),
        (["var/run/docker.sock", NC_URL], "the path of a Docker socket"),
        (["dsp-without-port", NC_URL], "HOST:PORT"),
        (["dsp:99999", NC_URL], "from 1 to 65535"),
        (["/run/docker.sock", "nextcloud.local"], "invalid nextcloud_url"),
        (["/run/docker.sock", "ftp://nextcloud.local"], "invalid nextcloud_url"),
        (["/run/docker.sock", NC_URL, "--compute_device", "tpu"], "expected cpu, cuda or rocm"),
        (["/run/docker.sock", NC_URL, "--net", "bad net"], "invalid --net"),
        (["/run/docker.sock", NC_URL, "--option", "NOEQUALS"], "expected KEY=VALUE"),
        (["/run/docker.sock", NC_URL, "--option", "docker_api_version=latest"], "auto"),
        (
            ["/run/docker.sock", NC_URL, "--harp", "--harp_frp_address", "h:8782"],
            "requires --harp_shared_key",
        ),
        (["h:8780", NC_URL, "--harp", "--harp_shared_key", "k"], "requires --harp_frp_address"),
        (["h:8780", NC_URL, "--harp"], "requires --harp_shared_key and --harp_frp_address"),
        (
            ["h:8780", NC_URL, "--harp", "--harp_shared_key", "k", "--harp_frp_address", "http://h:8782"],
            "FRP's address must not include a protocol",
        ),
        (
            [
                "h:8780",
                NC_URL,
                "--harp",
                "--harp_shared_key",
                "k",
                "--harp_frp_address",
                "h:8782",
                "--harp_exapp_direct",
            ],
            "--harp_exapp_direct cannot be used with --net host",
        ),  # fmt: skip
    ],
)
def test_bad_registrations_are_refused(berthd: Berthd, words: list[str], expected: str) -> None:
    answer = berthd.call([*REGISTER, *words])
    assert (answer.ok, answer.error) == (False, "invalid_argument"), answer.output
    assert expected in answer.output
    assert berthd.call("daemons:list").data == []


def test_refusals_of_the_other_arguments(berthd: Berthd) -> None:
    base = ["/run/docker.sock", NC_URL]
    unknown = berthd.call(["daemons:register", "d", "D", "k8s-install", "http", *base])
    assert unknown.error == "invalid_argument"
    assert "expected docker-install, manual-install or kubernetes-install (with --k8s)" in unknown.output
    protocol = berthd.call(["daemons:register", "d", "D", "docker-install", "ftp", *base])
    assert "the protocol must be `http` or `https`" in protocol.output
    control = berthd.call(["daemons:register", "bad\x01name", "D", "docker-install", "http", *base])
    assert control.error == "invalid_argument" and "control characters" in control.output
    assert berthd.call(["daemons:check", "bad\nname"]).error == "invalid_argument"
    missing = berthd.call(["daemons:register", "d", "D", "docker-install", "http"])
    assert missing.error == "invalid_argument" and "missing HOST" in missing.output


def test_exapp_direct_with_a_docker_network_is_accepted(berthd: Berthd) -> None:
    harp = ["--harp", "--harp_shared_key", "k", "--harp_frp_address", "h:8782", "--harp_exapp_direct"]
    assert berthd.call([*REGISTER, "h:8780", NC_URL, *harp, "--net", "nextcloud"]).ok
    manual = ["daemons:register", "m", "M", "manual-install", "http", "h:8780", NC_URL, *harp]
    assert berthd.call(manual).ok


@pytest.mark.parametrize("command", ["daemons:check", "daemons:unregister", "daemons:default"])
def test_an_unregistered_daemon_is_not_found(berthd: Berthd, command: str) -> None:
    answer = berthd.call([command, "nope"])
    assert (answer.ok, answer.error) == (False, "not_found")
    assert answer.output == "Daemon config nope not found."


# Secrets


def test_secrets_are_never_shown_nor_logged(berthd: Berthd) -> None:
    password, key = "dsp-" + secrets.token_hex(8), "harp-" + secrets.token_hex(8)
    register(berthd, "dsp", "127.0.0.1:2375", "--haproxy_password", password)
    register(
        berthd, "harp", "127.0.0.1:8780", "--harp", f"--harp_shared_key={key}", "--harp_frp_address=h:8782"
    )
    named = berthd.call(
        "daemons:register",
        {
            "name": "named",
            "display-name": "Named",
            "accepts-deploy-id": "docker-install",
            "protocol": "http",
            "host": "127.0.0.1:2376",
            "nextcloud_url": NC_URL,
            "haproxy_password": password,
        },
    )
    assert named.ok, named.output
    bad = berthd.call([*REGISTER, "http://x:1", NC_URL, "--haproxy_password", password])
    assert not bad.ok
    listing = berthd.call("daemons:list")
    shown = listing.output + json.dumps(listing.data)
    assert password not in shown and key not in shown
    configs = {d["name"]: d["deploy_config"] for d in listing.data}
    assert configs["dsp"]["haproxy_password"] == "***"
    assert configs["harp"]["harp"]["shared_key"] == "***"
    assert configs["harp"]["haproxy_password"] == "***"
    berthd.stop()
    logged = berthd.log() + berthd.stderr_file.read_text()
    assert "daemons:register" in logged and "***" in logged
    assert password not in logged and key not in logged


# Apps on a daemon


def test_unregister_refuses_while_apps_use_the_daemon_and_force_removes_them(
    berthd: Berthd, docker_host: str
) -> None:
    register(berthd, "busy", socket_path(docker_host))
    for app in ("one", "two"):
        assert berthd.call(f"apps:create {app}").ok
        assert berthd.call(f"apps:set {app} daemon busy").ok
    assert berthd.call("apps:create bystander").ok
    folder = berthd.data_dir / "apps" / "one"
    folder.mkdir(parents=True, exist_ok=True)
    refused = berthd.call("daemons:unregister busy")
    assert (refused.ok, refused.error) == (False, "conflict")
    assert refused.output == "busy daemon contains 2 apps, please remove them first to proceed."
    assert refused.data == {"daemon": "busy", "apps": ["one", "two"]}
    assert [d["name"] for d in berthd.call("daemons:list").data] == ["busy"]

    forced = berthd.call("daemons:unregister busy --force")
    assert forced.ok, forced.output
    assert forced.output.splitlines() == [
        "Destroying one... done",
        "Destroying two... done",
        "Daemon config unregistered.",
    ]
    assert berthd.call("apps:info one").error == "not_found"
    assert berthd.call("apps:info two").error == "not_found"
    assert berthd.call("apps:info bystander").ok
    assert not folder.exists()
    assert berthd.call("daemons:list").data == []


# An engine that is not there


def test_an_engine_that_is_not_there_is_unavailable(berthd: Berthd, tmp_path: Path) -> None:
    missing = tmp_path / "gone.sock"
    register(berthd, "gone", str(missing))
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(stale))  # the file stays; nothing listens on it
    register(berthd, "stale", str(stale))
    register(berthd, "closed_port", f"127.0.0.1:{free_port()}")

    gone = berthd.call("daemons:check gone")
    assert (gone.ok, gone.error) == (False, "unavailable")
    assert gone.output == f"deploy daemon gone is unavailable: no such socket {missing}"
    stale_answer = berthd.call("daemons:check stale")
    assert stale_answer.output == f"deploy daemon stale is unavailable: connection refused on {stale}"
    closed = berthd.call("daemons:check closed_port")
    assert closed.output == "deploy daemon closed_port is unavailable: connection refused"
    assert berthd.call("ping").output == "pong"
