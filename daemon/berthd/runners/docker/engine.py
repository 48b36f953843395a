"""The one place that builds a Docker SDK client for a deploy daemon, and says why an engine is unreachable.

The three transports of a `docker-install` daemon, as AppAPI uses them:
- a socket path: `unix://PATH`;
- `HOST:PORT` of a Docker Socket Proxy: `http(s)://HOST:PORT` with HTTP basic auth, user
  `app_api_haproxy_user` and the daemon's haproxy password;
- `HOST:PORT` of HaRP (`--harp`): `http(s)://HOST:PORT/exapps/app_api` with the `harp-shared-key` and
  `docker-engine-port` headers.
https verifies the certificate, against the system's CAs or the `tls_ca_file` option's bundle. The API
version is the daemon's `docker_api_version` option; `auto` asks the engine.

Everything here blocks: callers run it in `trio.to_thread`. `docker` (and `requests`) are imported on first
use, not when berthd starts.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from berthd.deploy.daemons import DOCKER_INSTALL, SWARM_INSTALL, TLS_CA_FILE_OPTION, is_socket_path
from berthd.errors import CommandError, daemon_unavailable, invalid_argument
from berthd.store.records import DaemonRecord

if TYPE_CHECKING:
    import docker

HAPROXY_USER = "app_api_haproxy_user"
HARP_DOCKER_PATH = "/exapps/app_api"
TIMEOUT_S = 60.0
"""Each engine request; long operations (pulls, builds) stream and are the runner's concern."""
PING_TIMEOUT_S = 10.0
MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to reach a daemon's engine; built without touching the network or the SDK."""

    base_url: str
    tls: bool = False
    verify: bool | str = True
    auth: tuple[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def endpoint_of(daemon: DaemonRecord) -> Endpoint:
    if daemon.deploy_id not in (DOCKER_INSTALL, SWARM_INSTALL) or daemon.host is None:
        raise invalid_argument(
            f"deploy daemon {daemon.name} is {daemon.deploy_id}: it has no Docker engine to talk to"
        )
    if is_socket_path(daemon.host):
        return Endpoint(f"unix://{daemon.host}")
    config = daemon.deploy_config
    tls = daemon.protocol == "https"
    verify: bool | str = config.additional_options.get(TLS_CA_FILE_OPTION) or True
    base_url = f"{daemon.protocol}://{daemon.host}"
    if config.harp is not None:
        headers = {
            "harp-shared-key": config.harp.shared_key,
            "docker-engine-port": config.harp.docker_socket_port,
        }
        return Endpoint(base_url + HARP_DOCKER_PATH, tls, verify, headers=headers)
    auth = (HAPROXY_USER, config.haproxy_password) if config.haproxy_password else None
    return Endpoint(base_url, tls, verify, auth=auth)


def _docker() -> Any:
    import docker  # heavy: imported on first use

    return docker


def _open(endpoint: Endpoint, version: str, timeout: float) -> docker.DockerClient:
    client = _docker().DockerClient(
        base_url=endpoint.base_url, version=version, timeout=timeout, tls=endpoint.tls
    )
    session = client.api  # a requests.Session
    # Only what the daemon says: no proxy from the environment, no ~/.netrc credentials.
    session.trust_env = False
    session.auth = endpoint.auth
    session.headers.update(endpoint.headers)
    session.verify = endpoint.verify
    return client


def client_for(daemon: DaemonRecord, timeout: float = TIMEOUT_S) -> docker.DockerClient:
    """A `docker.DockerClient` on the daemon's engine (the caller closes it). Blocking.

    `auto` is negotiated here rather than by the SDK, whose constructor would ask before the
    credentials are set on the session.
    """
    endpoint = endpoint_of(daemon)
    version = daemon.deploy_config.docker_api_version
    if version == "auto":
        # Any version the SDK accepts will do: /version itself is not versioned.
        lowest = _docker().constants.MINIMUM_DOCKER_API_VERSION
        with closing(_open(endpoint, lowest, timeout)) as probe:
            answer = probe.api.version(api_version=False)
        negotiated = answer.get("ApiVersion") if isinstance(answer, dict) else None
        if not isinstance(negotiated, str):
            raise _docker().errors.DockerException("the answer to /version has no ApiVersion")
        version = negotiated
    return _open(endpoint, version, timeout)


def ping(daemon: DaemonRecord, timeout: float = PING_TIMEOUT_S) -> tuple[bool, str | None, str | None]:
    """(reachable, the engine's Docker version, why not): `_ping` and `/version` through the transport."""
    try:
        with closing(client_for(daemon, timeout)) as client:
            client.ping()
            version = client.version()
    except engine_errors() as exc:
        return False, None, reason(exc, daemon)
    return True, str(version.get("Version", "unknown")), None


def engine_errors() -> tuple[type[BaseException], ...]:
    """What an engine call raises when the engine, the proxy or the network fails."""
    docker = _docker()
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def unavailable(name: str, exc: BaseException, daemon: DaemonRecord | None = None) -> CommandError:
    """The one error for an unreachable engine: `unavailable`, with the daemon's name and a short reason."""
    return daemon_unavailable(name, reason(exc, daemon))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (causes, contexts, urllib3's `reason`, exceptions in args)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(e for e in wrapped if isinstance(e, BaseException))


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def reason(exc: BaseException, daemon: DaemonRecord | None = None) -> str:
    """A short reason a person can act on, from whatever the SDK, requests or the socket raised."""
    chain = list(_chain(exc))
    socket_path = daemon.host if daemon is not None and is_socket_path(daemon.host) else None
    harp = daemon is not None and daemon.deploy_config.harp is not None

    def found(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    status = next((s for s in map(_status, chain) if s is not None), None)
    if status in (401, 403):
        secret = "HaRP shared key" if harp else "haproxy password"
        return f"authentication failed (wrong {secret}?)"
    if status is not None:
        detail = next((str(d) for d in (getattr(e, "explanation", None) for e in chain) if d), None)
        return _short(f"the engine answered HTTP {status}" + (f": {detail}" if detail else ""))
    if found(FileNotFoundError):
        return f"no such socket {socket_path}" if socket_path else "no such socket"
    if found(ConnectionRefusedError):
        return f"connection refused on {socket_path}" if socket_path else "connection refused"
    if found(PermissionError):
        return f"permission denied on {socket_path}" if socket_path else "permission denied"
    if found(socket.gaierror):
        return "cannot resolve the host name"
    if found(ssl.SSLCertVerificationError):
        return "TLS certificate verification failed"
    if found(ssl.SSLError) or any(type(e).__name__ == "SSLError" for e in chain):
        return _short(f"TLS failed: {exc}")
    if found(TimeoutError) or any("Timeout" in type(e).__name__ for e in chain):
        return "timed out"
    if found(ConnectionResetError, ConnectionAbortedError, BrokenPipeError) or any(
        type(e).__name__ in ("RemoteDisconnected", "ProtocolError") for e in chain
    ):
        return "the connection was closed by the other end (is this a Docker engine?)"
    if any(type(e).__name__ == "JSONDecodeError" for e in chain):
        return "the answer is not JSON (is this a Docker engine?)"
    return _short(str(exc) or type(exc).__name__)


def _short(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else text
    return first if len(first) <= MAX_REASON else first[: MAX_REASON - 3] + "..."
