"""A HaRP of the tests' own: HaRP 0.4's control API (`haproxy_agent.py` behind its haproxy.cfg) on 127.0.0.1.

What HaRP's haproxy does first, this does first: a request under `/exapps/app_api` without the right
`harp-shared-key` gets 401; one with `docker-engine-port` whose path is not under `/docker/` is passed
to the Docker engine, if haproxy's allow-list lets it (`_ping`, image inspect, container inspect and
logs of `nc_app_*`, image pulls; anything else 403). The rest is the agent's: `/info`, `/exapp_storage`,
`/docker/exapp/*` (acting on the real test engine, so containers really run) and `/k8s/exapp/*` (no
cluster can run here: Deployments, PVCs and Services are kept as records). Payloads are checked as the
agent's pydantic models check them (400 with the reason), and every request is recorded, so that tests can
hold each one against `PROTOCOL`: a path, a header or a JSON key berthd sends that HaRP does not know
fails a test.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import docker

BASE = "/exapps/app_api"
VERSION = "0.4.4"
ENGINE_PORT_HEADER = "docker-engine-port"
KEY_HEADER = "harp-shared-key"
NAME_KEYS = frozenset({"name", "instance_id", "role_suffix"})


@dataclass(frozen=True)
class Endpoint:
    """One route of the agent: its JSON keys (required, and all it knows) and whether it is a Docker one."""

    docker: bool
    required: frozenset[str] = frozenset()
    known: frozenset[str] = frozenset()


def _keys(*names: str) -> frozenset[str]:
    return frozenset(names)


CREATE_KEYS = NAME_KEYS | _keys(
    "image_id", "image", "network_mode", "environment_variables", "restart_policy", "compute_device",
    "mount_points", "resource_limits",
)  # fmt: skip
EXPOSE_KEYS = NAME_KEYS | _keys(
    "port", "expose_type", "upstream_host", "upstream_port", "service_port", "node_port",
    "external_traffic_policy", "load_balancer_ip", "service_annotations", "service_labels",
    "wait_timeout_seconds", "wait_interval_seconds", "node_address_type", "node_name", "node_label_selector",
)  # fmt: skip
STORAGE_KEYS = _keys("exapp_token", "exapp_version", "host", "port", "routes")

PROTOCOL: dict[tuple[str, str], Endpoint] = {
    ("GET", "/info"): Endpoint(False),
    ("GET", "/heartbeat"): Endpoint(False),
    ("POST", "/exapp_storage/{app}"): Endpoint(False, STORAGE_KEYS, STORAGE_KEYS),
    ("DELETE", "/exapp_storage/{app}"): Endpoint(False),
    ("POST", "/docker/exapp/exists"): Endpoint(True, _keys("name"), NAME_KEYS),
    ("POST", "/docker/exapp/create"): Endpoint(True, _keys("name", "image_id", "network_mode"), CREATE_KEYS),
    ("POST", "/docker/exapp/start"): Endpoint(True, _keys("name"), NAME_KEYS),
    ("POST", "/docker/exapp/stop"): Endpoint(True, _keys("name"), NAME_KEYS),
    ("POST", "/docker/exapp/wait_for_start"): Endpoint(True, _keys("name"), NAME_KEYS),
    ("POST", "/docker/exapp/remove"): Endpoint(True, _keys("name"), NAME_KEYS | {"remove_data"}),
    ("POST", "/docker/exapp/image_remove"): Endpoint(True, _keys("image_ref"), _keys("image_ref")),
    ("POST", "/docker/exapp/install_certificates"): Endpoint(
        True, _keys("name"), NAME_KEYS | {"system_certs_bundle", "install_frp_certs"}
    ),
    ("POST", "/k8s/exapp/exists"): Endpoint(False, _keys("name"), NAME_KEYS),
    ("POST", "/k8s/exapp/create"): Endpoint(False, _keys("name"), CREATE_KEYS),
    ("POST", "/k8s/exapp/start"): Endpoint(False, _keys("name"), NAME_KEYS),
    ("POST", "/k8s/exapp/stop"): Endpoint(False, _keys("name"), NAME_KEYS),
    ("POST", "/k8s/exapp/wait_for_start"): Endpoint(False, _keys("name"), NAME_KEYS),
    ("POST", "/k8s/exapp/remove"): Endpoint(False, _keys("name"), NAME_KEYS | {"remove_data"}),
    ("POST", "/k8s/exapp/install_certificates"): Endpoint(False, _keys("name"), NAME_KEYS),
    ("POST", "/k8s/exapp/expose"): Endpoint(False, _keys("name", "port"), EXPOSE_KEYS),
}

# haproxy.cfg's docker_engine_backend: the Engine API calls HaRP lets through, all others denied
PASS_THROUGH = (
    ("GET", re.compile(r"^(/v[\d.]+)?/_ping$")),
    ("GET", re.compile(r"^(/v[\d.]+)?/images/.*/json")),
    ("GET", re.compile(r"^(/v[\d.]+)?/containers/nc_app_[a-zA-Z0-9_.-]+/json")),
    ("GET", re.compile(r"^(/v[\d.]+)?/containers/nc_app_[a-zA-Z0-9_.-]+/logs")),
    ("POST", re.compile(r"^(/v[\d.]+)?/images/create")),
)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # under /exapps/app_api, without the query
    query: str
    headers: dict[str, str]  # lower-case names
    body: Any
    status: int


@dataclass
class K8sExApp:
    image: str
    env: list[str]
    compute_device: str
    replicas: int = 0
    pvc: str = ""
    service: dict[str, Any] | None = None
    upstream: tuple[str, int] | None = None


def k8s_name(name: str) -> str:
    """The agent's `_sanitize_k8s_name` of `nc_app_NAME`."""
    raw = re.sub(r"[^a-z0-9-]", "-", f"nc_app_{name}".lower().replace("_", "-"))
    return re.sub(r"-+", "-", raw).strip("-")[:63].rstrip("-") or "exapp"


class HttpError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


@dataclass
class FakeHarp:
    """The server; `start()` it, `url` is its `HOST:PORT`, `stop()` ends it (HaRP down)."""

    shared_key: str
    docker_host: str  # the test engine, unix:///...
    kubernetes: bool = False  # HP_K8S_ENABLED
    k8s_reachable: bool = True
    version: str = VERSION
    requests: list[Recorded] = field(default_factory=list)
    storage: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, K8sExApp] = field(default_factory=dict)
    faults: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (status, text), once
    hangs: dict[str, float] = field(default_factory=dict)  # path -> seconds of silence first, once
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeHarp:
        harp = self

        class Handler(_Handler):
            server_harp = harp

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail_once(self, path: str, status: int, text: str) -> None:
        """The next request to `path` is answered `status` with `text`, as HaRP answers its errors."""
        self.faults[path] = (status, text)

    def hang_once(self, path: str, seconds: float) -> None:
        """The next request to `path` is read, then answered only after `seconds` of silence."""
        self.hangs[path] = seconds

    def calls(self, path_prefix: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.calls()]

    def record(self, entry: Recorded) -> None:
        with self._lock:
            self.requests.append(entry)

    def engine(self) -> docker.APIClient:
        return docker.APIClient(base_url=self.docker_host)


def endpoint_of(method: str, path: str) -> Endpoint | None:
    if path.startswith("/exapp_storage/"):
        return PROTOCOL.get((method, "/exapp_storage/{app}"))
    return PROTOCOL.get((method, path))


def protocol_drift(entries: list[Recorded], shared_key: str, engine_port: str = "24000") -> list[str]:
    """Every way the recorded requests differ from HaRP's protocol (empty: none)."""
    drift = []
    for entry in entries:
        where = f"{entry.method} {entry.path}"
        if entry.headers.get(KEY_HEADER) != shared_key:
            drift.append(f"{where}: no {KEY_HEADER} or a wrong one")
        if endpoint_of(entry.method, entry.path) is None and ENGINE_PORT_HEADER in entry.headers:
            if entry.headers.get(ENGINE_PORT_HEADER) != engine_port:
                drift.append(f"{where}: an Engine API call without {ENGINE_PORT_HEADER}: {engine_port}")
            if not any(m == entry.method and p.match(entry.path) for m, p in PASS_THROUGH):
                drift.append(f"{where}: HaRP's haproxy denies this Engine API call")
            continue
        endpoint = endpoint_of(entry.method, entry.path)
        if endpoint is None:
            drift.append(f"{where}: no such HaRP endpoint")
            continue
        if endpoint.docker != (ENGINE_PORT_HEADER in entry.headers):
            drift.append(f"{where}: {ENGINE_PORT_HEADER} {'missing' if endpoint.docker else 'sent'}")
        if endpoint.known:
            if not isinstance(entry.body, dict):
                drift.append(f"{where}: the body is not a JSON object")
                continue
            keys = set(entry.body)
            if missing := endpoint.required - keys:
                drift.append(f"{where}: missing {sorted(missing)}")
            if unknown := keys - endpoint.known:
                drift.append(f"{where}: keys HaRP does not know {sorted(unknown)}")
    return drift


class _Handler(BaseHTTPRequestHandler):
    server_harp: FakeHarp
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # the frontend (haproxy.cfg) and the agent's routes

    def _handle(self) -> None:
        harp = self.server_harp
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = parts.path.removeprefix(BASE) if parts.path.startswith(BASE + "/") else None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")

        def recorded(status: int) -> int:
            harp.record(Recorded(self.command, path or parts.path, parts.query, headers, body, status))
            return status

        try:
            if path is None:
                raise HttpError(404, "404 Not Found")
            if headers.get(KEY_HEADER) != harp.shared_key:
                raise HttpError(401, "401 Unauthorized")
            time.sleep(harp.hangs.pop(path, 0.0))
            fault = harp.faults.pop(path, None)
            if fault is not None:
                raise HttpError(*fault)
            if ENGINE_PORT_HEADER in headers and not path.startswith("/docker/"):
                recorded(self._pass_through(path, parts.query))  # a stream: recorded once it ends
                return
            status, answer = self._route(path, body, headers)
        except HttpError as error:
            status, answer = error.status, error.text
        # recorded before the answer is sent: a client that has its answer finds its request recorded
        self._answer(recorded(status), answer)

    def _answer(self, status: int, answer: Any) -> None:
        if answer is None:
            data, kind = b"", "text/plain"
        elif isinstance(answer, str):
            data, kind = answer.encode(), "text/plain; charset=utf-8"
        else:
            data, kind = json.dumps(answer).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _pass_through(self, path: str, query: str) -> int:
        """haproxy's docker_engine_backend: the allow-list, then the engine, streamed back."""
        if not any(m == self.command and p.match(path) for m, p in PASS_THROUGH):
            raise HttpError(403, "403 Forbidden")
        connection = _UnixConnection(self.server_harp.docker_host.removeprefix("unix://"))
        try:
            connection.request(
                self.command, path + (f"?{query}" if query else ""), headers={"Host": "docker"}
            )
            response = connection.getresponse()
            self.send_response_only(response.status)
            for name in ("Content-Type", "Server", "Api-Version"):
                if response.getheader(name):
                    self.send_header(name, str(response.getheader(name)))
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := response.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return response.status
        except (BrokenPipeError, ConnectionResetError):
            return 499  # the client went away (a log follow ended)
        finally:
            connection.close()

    def _route(self, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        harp = self.server_harp
        endpoint = endpoint_of(self.command, path)
        if endpoint is None:
            raise HttpError(404, "404: Not Found")
        if endpoint.docker:
            port = headers.get(ENGINE_PORT_HEADER)
            if not port:
                raise HttpError(400, "Missing 'docker-engine-port' header.")
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise HttpError(400, f"Invalid 'docker-engine-port' header value: {port}")
        if endpoint.known or self.command == "POST" and path.startswith("/exapp_storage/"):
            if not isinstance(body, dict):
                raise HttpError(400, "Invalid JSON body")
            if missing := sorted(endpoint.required - set(body)):
                raise HttpError(400, f"Payload validation error: {missing[0]} Field required")
        if path == "/info":
            k8s: dict[str, Any] = {"enabled": harp.kubernetes}
            if harp.kubernetes:
                k8s |= {"api_server": "https://k8s.test:6443", "reachable": harp.k8s_reachable}
            return 200, {"version": harp.version, "docker": True, "kubernetes": k8s}
        if path == "/heartbeat":
            return 200, {"status": "ok"}
        if path.startswith("/exapp_storage/"):
            return self._storage(path.removeprefix("/exapp_storage/").lower(), body)
        if path.startswith("/docker/exapp/"):
            return _DockerActions(harp).run(path.removeprefix("/docker/exapp/"), body)
        return _K8sActions(harp).run(path.removeprefix("/k8s/exapp/"), body)

    def _storage(self, app: str, body: Any) -> tuple[int, Any]:
        harp = self.server_harp
        if self.command == "DELETE":
            if harp.storage.pop(app, None) is None:
                raise HttpError(404, "404: Not Found")
            return 204, None
        routes = body.get("routes", [])
        valid = (
            isinstance(body["exapp_token"], str)
            and isinstance(body["exapp_version"], str)
            and isinstance(body["host"], str)
            and isinstance(body["port"], int)
            and isinstance(routes, list)
            and all(
                isinstance(r, dict)
                and isinstance(r.get("url"), str)
                and r.get("access_level") in (0, 1, 2)
                and all(isinstance(s, int) for s in r.get("bruteforce_protection", []))
                for r in routes
            )
        )
        if not valid:
            raise HttpError(400, "400: Bad Request")
        record = dict(body)
        exapp = harp.deployments.get(k8s_name(app))
        if exapp is not None and exapp.upstream is not None:  # the agent's _k8s_resolve_exapp_upstream
            record["host"], record["port"] = exapp.upstream
        harp.storage[app] = record
        return 204, None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self._path)


def _names(body: dict[str, Any]) -> tuple[str, str]:
    """The agent's ExAppName: the container and its volume."""
    name, instance = str(body["name"]), str(body.get("instance_id") or "")
    base = f"nc_app_{instance}_{name}" if instance else f"nc_app_{name}"
    role = body.get("role_suffix")
    return (f"{base}_{role}" if role else base), f"{base}_data"


@dataclass
class _DockerActions:
    """`/docker/exapp/*`, done on the test engine as the agent does them on its own."""

    harp: FakeHarp

    def run(self, action: str, body: dict[str, Any]) -> tuple[int, Any]:
        engine = self.harp.engine()
        try:
            return dict(self._actions())[action](engine, body)
        except docker.errors.APIError as error:
            if error.status_code == 404:
                raise HttpError(404, f"Container '{_names(body)[0]}' not found.") from None
            raise HttpError(
                503, f"Error communicating with Docker Engine: Status {error.status_code}"
            ) from None
        finally:
            engine.close()

    def _actions(self) -> Iterator[tuple[str, Any]]:
        yield from (
            ("exists", self.exists), ("create", self.create), ("start", self.start), ("stop", self.stop),
            ("wait_for_start", self.wait_for_start), ("remove", self.remove),
            ("install_certificates", self.install_certificates),
        )  # fmt: skip

    def _state(self, engine: docker.APIClient, name: str) -> dict[str, Any] | None:
        try:
            return dict(engine.inspect_container(name))
        except docker.errors.NotFound:
            return None

    def exists(self, engine: docker.APIClient, body: dict[str, Any]) -> tuple[int, Any]:
        attrs = self._state(engine, _names(body)[0])
        if attrs is None:
            return 200, {"exists": False}
        return 200, {"exists": True, "image_ref": attrs["Config"]["Image"]}

    def create(self, engine: docker.APIClient, body: dict[str, Any]) -> tuple[int, Any]:
        name, volume = _names(body)
        if body.get("compute_device", "cpu") not in ("cpu", "cuda", "rocm"):
            raise HttpError(400, "Payload validation error: compute_device")
        env = body.get("environment_variables", [])
        if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
            raise HttpError(400, "Payload validation error: environment_variables")
        if self._state(engine, name) is not None:
            raise HttpError(409, f"Container with name '{name}' already exists.")
        try:
            engine.inspect_volume(volume)
        except docker.errors.NotFound:
            engine.create_volume(volume)
        host_config = engine.create_host_config(
            network_mode=body["network_mode"],
            restart_policy={
                "Name": str(body.get("restart_policy", "unless-stopped"))
            },  # as the agent sets it
            mounts=[docker.types.Mount(f"/{volume}", volume, type="volume")],
        )
        created = engine.create_container(
            body["image_id"], name=name, hostname=body["name"], environment=env, host_config=host_config
        )
        return 201, {"id": created["Id"], "name": name}

    def start(self, engine: docker.APIClient, body: dict[str, Any]) -> tuple[int, Any]:
        attrs = self._state(engine, _names(body)[0])
        if attrs is None:
            raise HttpError(404, f"Container '{_names(body)[0]}' not found.")
        if attrs["State"]["Running"]:
            return 200, "Container already started"
        engine.start(attrs["Id"])
        return 204, None

    def stop(self, engine: docker.APIClient, body: dict[str, Any]) -> tuple[int, Any]:
        attrs = self._state(engine, _names(body)[0])
        if attrs is None:
            raise HttpError(404, f"Container '{_names(body)[0]}' not found.")
        if not attrs["State"]["Running"]:
            return 200, "Container already stopped"
        engine.stop(attrs["Id"], timeout=1)
        return 204, None

    def wait_for_start(self, engine: docker.APIClient, body: dict[str, Any]) -> tuple[int, Any]:
        name = _names(body)[0]
        deadline = time.monotonic() + 30
        while True:
            attrs = self._state(engine, name)
            if attrs is None:
                return 200, {"started": False, "status": "not_found", "reason": "container not found"}
            state = attrs["State"]
            status, health = state["Status"], (state.get("Health") or {}).get("Status")
            if status == "running" and health in (None, "healthy"):
                return 200, {"started": True, "status": status, "health": health}
            if status in ("paused", "exited", "dead"):
                reason = f"container in state '{status}'"
                return 200, {"started": False, "status": status, "health": health, "reason": reason}
            if time.monotonic() > deadline:
                return 200, {"started": False, "status": status, "health": health, "reason": "timeout"}
            time.sleep(0.5)

    def remove(self, engine: docker.APIClient, body: dict[str, Any]) -> tuple[int, Any]:
        name, volume = _names(body)
        with contextlib.suppress(docker.errors.NotFound):
            engine.remove_container(name, force=True)
        if body.get("remove_data"):
            with contextlib.suppress(docker.errors.NotFound):
                engine.remove_volume(volume)
        return 204, None

    def install_certificates(self, engine: docker.APIClient, body: dict[str, Any]) -> tuple[int, Any]:
        if self._state(engine, _names(body)[0]) is None:
            raise HttpError(404, f"Container '{_names(body)[0]}' not found.")
        return 204, None


EXPOSE_TYPES = ("nodeport", "clusterip", "loadbalancer", "manual")
NODE_ADDRESS = {"InternalIP": "192.0.2.10", "ExternalIP": "198.51.100.10"}  # documentation ranges
CLUSTER_IP = "192.0.2.96"
LOAD_BALANCER_INGRESS = "203.0.113.7"


@dataclass
class _K8sActions:
    """`/k8s/exapp/*` on a cluster of records: Deployments (replicas), their PVCs and Services."""

    harp: FakeHarp

    def run(self, action: str, body: dict[str, Any]) -> tuple[int, Any]:
        if not self.harp.kubernetes:
            raise HttpError(503, "Kubernetes backend is disabled in HaRP.")
        if not self.harp.k8s_reachable:
            raise HttpError(503, "Error communicating with Kubernetes API")
        name = k8s_name(str(body["name"]))
        deployments = self.harp.deployments
        if action == "exists":
            return 200, {"exists": name in deployments}
        if action == "create":
            image = body.get("image_id") or body.get("image")
            if not image:
                raise HttpError(400, "Payload validation error: image_id Field required")
            if name in deployments:
                raise HttpError(409, f"Deployment '{name}' already exists.")
            deployments[name] = K8sExApp(
                str(image), list(body.get("environment_variables", [])), str(body.get("compute_device", "cpu")),
                pvc=k8s_name(f"{body['name']}_data"),
            )  # fmt: skip
            return 201, {"name": name}
        if action == "install_certificates":
            return 204, None
        exapp = deployments.get(name)
        if action == "remove":
            deployments.pop(name, None)
            return 204, None
        if exapp is None:
            raise HttpError(404, f"Deployment '{name}' not found.")
        if action in ("start", "stop"):
            exapp.replicas = 1 if action == "start" else 0
            return 204, None
        if action == "wait_for_start":
            if exapp.replicas:
                return 200, {
                    "started": True,
                    "status": "running",
                    "health": "ready",
                    "reason": None,
                    "message": None,
                }
            return 200, {
                "started": False,
                "status": "unknown",
                "health": "timeout",
                "reason": None,
                "message": None,
            }
        return self._expose(name, exapp, body)

    def _expose(self, name: str, exapp: K8sExApp, body: dict[str, Any]) -> tuple[int, Any]:
        kind = body.get("expose_type", "clusterip")
        if kind not in EXPOSE_TYPES:
            raise HttpError(400, f"Payload validation error: expose_type {kind!r}")
        node_port = body.get("node_port")
        if node_port is not None and not 30000 <= int(node_port) <= 32767:
            raise HttpError(400, "Payload validation error: node_port")
        if body.get("external_traffic_policy") not in (None, "Cluster", "Local"):
            raise HttpError(400, "Payload validation error: external_traffic_policy")
        if body.get("node_address_type", "InternalIP") not in NODE_ADDRESS:
            raise HttpError(400, "Payload validation error: node_address_type")
        port, upstream_host = int(body["port"]), body.get("upstream_host")
        if kind == "manual":
            if not upstream_host:
                raise HttpError(
                    400, "Payload validation error: upstream_host is required when expose_type='manual'"
                )
            host, upstream_port = str(upstream_host), int(body.get("upstream_port") or port)
        else:
            service_port = int(body.get("service_port") or port)
            exapp.service = {"type": kind, "port": service_port, "nodePort": node_port or 30080,
                             "externalTrafficPolicy": body.get("external_traffic_policy"),
                             "loadBalancerIP": body.get("load_balancer_ip")}  # fmt: skip
            if kind == "nodeport":
                upstream_port = int(node_port or 30080)
                host = upstream_host or NODE_ADDRESS[body.get("node_address_type", "InternalIP")]
            elif kind == "clusterip":
                host, upstream_port = upstream_host or CLUSTER_IP, service_port
            else:
                host = upstream_host or body.get("load_balancer_ip") or LOAD_BALANCER_INGRESS
                upstream_port = service_port
        exapp.upstream = (str(host), upstream_port)
        answer = {
            "appId": str(body["name"]).lower(), "host": host, "port": upstream_port, "exposeType": kind,
            "serviceName": name, "namespace": "nextcloud-exapps",
        }  # fmt: skip
        return 200, answer
