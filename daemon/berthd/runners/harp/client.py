"""HaRP's control API (`{protocol}://{host}/exapps/app_api`), as AppAPI speaks it: the one place that talks
HTTP to HaRP and turns its answers into berthd's errors.

Every request carries `harp-shared-key`; the Docker calls (`/docker/exapp/...` and the Engine API HaRP
passes through: `/_ping`, `/containers/nc_app_APP/json`, ...) also carry `docker-engine-port`, and nothing else does (HaRP sends any other
path with that header to the Docker engine). HaRP answers errors as text; each status becomes one error
here, once: 401 a wrong key (never shown), 400 HaRP's message, 404, 409, 503 (`unavailable`), 504
(`timeout`).

The client is `requests` (already under the Docker SDK berthd uses, so nothing new is loaded or
installed), imported on first use and run on a worker thread (`trio.to_thread`) with a timeout on every
call: connect and read, so a HaRP that accepts and never answers cannot hold a command.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio

from berthd.errors import CommandError, daemon_unavailable
from berthd.store.records import DaemonRecord

if TYPE_CHECKING:
    import requests

BASE_PATH = "/exapps/app_api"
CONNECT_TIMEOUT_S = 5.0
TIMEOUT_S = 30.0  # each call; HaRP's own Docker calls time out before this
WAIT_TIMEOUT_S = 120.0  # `wait_for_start`, which HaRP itself bounds at 90 s
PULL_TIMEOUT_S = 600.0  # between two lines of a pull's progress
MAX_MESSAGE = 300


def _requests() -> Any:
    import requests  # imported on first use: not at berthd's start

    return requests


class HarpClient:
    """One daemon's HaRP. Blocking methods (`call`, `stream`) run on worker threads; `request` is the
    trio entry. A client is kept per daemon config by the runner, and closed with `close`."""

    def __init__(self, daemon: DaemonRecord) -> None:
        if daemon.deploy_config.harp is None or daemon.host is None:
            raise ValueError(f"deploy daemon {daemon.name} is not a HaRP daemon")
        harp = daemon.deploy_config.harp
        self.daemon = daemon.name
        self.base_url = f"{daemon.protocol}://{daemon.host.rstrip('/')}{BASE_PATH}"
        self._key = harp.shared_key
        self._engine_port = harp.docker_socket_port
        # the daemon's `docker_api_version` option; `auto`: unversioned paths, which the engine answers
        # in its own version (AppAPI pins v1.44, which an older engine refuses)
        version = daemon.deploy_config.docker_api_version
        self.docker_api = "" if version == "auto" else f"/v{version}"
        self._verify: bool | str = daemon.deploy_config.additional_options.get("tls_ca_file") or True
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    def _open(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                session = _requests().Session()
                session.trust_env = False  # only what the daemon says: no proxy, no ~/.netrc
                session.verify = self._verify
                self._session = session
            return self._session

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def headers(self, docker: bool) -> dict[str, str]:
        headers = {"harp-shared-key": self._key}
        if docker:
            headers["docker-engine-port"] = self._engine_port
        return headers

    def _send(self, method: str, path: str, *, docker: bool, timeout: float, **options: Any) -> Any:
        """Blocking: the response (the caller closes it); a failure to reach HaRP raises its error."""
        requests = _requests()
        try:
            return self._open().request(
                method,
                self.base_url + path,
                headers=self.headers(docker),
                timeout=(CONNECT_TIMEOUT_S, timeout),
                **options,
            )
        except requests.exceptions.RequestException as exc:
            raise self.unreachable(exc) from None

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        docker: bool = False,
        params: dict[str, str] | None = None,
        timeout: float = TIMEOUT_S,
        ok: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """Blocking: (status, JSON or text) of a 2xx answer, or of one of `ok`; any other status raises
        the error it means."""
        with self._send(method, path, docker=docker, timeout=timeout, json=body, params=params) as response:
            if response.status_code < 300 or response.status_code in ok:
                return response.status_code, _content(response)
            raise self.refused(response.status_code, response.text)

    def engine_version(self) -> str:
        """Blocking: the Docker engine's `_ping` through HaRP; its version from the `Server` header."""
        with self._send("GET", self.docker_api + "/_ping", docker=True, timeout=TIMEOUT_S) as response:
            if response.status_code >= 300:
                raise self.refused(response.status_code, response.text)
            server = response.headers.get("Server", "")  # "Docker/27.5.1 (linux)"
            return server.split("/", 1)[1].split(" ", 1)[0] if server.startswith("Docker/") else "unknown"

    def stream(
        self,
        path: str,
        params: dict[str, str],
        line: Callable[[bytes], None],
        timeout: float,
        method: str = "GET",
    ) -> None:
        """Blocking: an Engine API stream through HaRP's pass-through, chunk by chunk, until it ends."""
        requests = _requests()
        with self._send(
            method, self.docker_api + path, docker=True, timeout=timeout, params=params, stream=True
        ) as response:
            if response.status_code >= 300:
                raise self.refused(response.status_code, response.text)
            try:
                for chunk in response.iter_content(chunk_size=None):
                    line(chunk)
            except requests.exceptions.RequestException as exc:
                raise self.unreachable(exc) from None

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """`call` on a worker thread; the JSON (or text) of the answer."""

        def run() -> Any:
            return self.call(method, path, body, **options)[1]

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)

    # the boundary: HaRP's and the network's failures as berthd's errors, each in one place

    def refused(self, status: int, text: str) -> CommandError:
        message = _short(text) or f"HTTP {status}"
        data = {"daemon": self.daemon, "status": status}
        if status == 401:
            # the key is a secret: said to be wrong, never shown
            return daemon_unavailable(
                self.daemon, "HaRP refused the shared key (401): wrong --harp_shared_key?"
            )
        if status == 400:
            return CommandError(
                "invalid_argument", f"HaRP ({self.daemon}) refused the request: {message}", data
            )
        if status == 404:
            return CommandError("not_found", f"HaRP ({self.daemon}): {message}", data)
        if status == 409:
            return CommandError("conflict", f"HaRP ({self.daemon}): {message}", data)
        if status == 504:
            return CommandError("timeout", f"HaRP ({self.daemon}) timed out: {message}", data)
        return CommandError(
            "unavailable",
            f"deploy daemon {self.daemon} is unavailable: HaRP answered {status}: {message}",
            data,
        )

    def unreachable(self, exc: BaseException) -> CommandError:
        requests = _requests()
        if isinstance(exc, requests.exceptions.Timeout):
            return CommandError(
                "timeout", f"HaRP ({self.daemon}) did not answer in time", {"daemon": self.daemon}
            )
        if isinstance(exc, requests.exceptions.SSLError):
            return daemon_unavailable(self.daemon, "TLS failed talking to HaRP")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return daemon_unavailable(self.daemon, f"cannot connect to HaRP at {self.base_url}")
        return daemon_unavailable(self.daemon, _short(str(exc)) or type(exc).__name__)


def _content(response: Any) -> Any:
    if not response.content:
        return None
    if "json" in response.headers.get("Content-Type", ""):
        with contextlib.suppress(ValueError):
            return response.json()
    return response.text


def _short(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    first = lines[0].strip() if lines else ""
    return first if len(first) <= MAX_MESSAGE else first[: MAX_MESSAGE - 3] + "..."


def frames(raw: bytes) -> Iterator[tuple[str, bytes]]:
    """The Engine API's multiplexed log stream (8-byte headers: stream, size) as (stream, bytes)."""
    offset = 0
    while offset + 8 <= len(raw):
        kind, size = raw[offset], int.from_bytes(raw[offset + 4 : offset + 8], "big")
        yield ("stderr" if kind == 2 else "stdout"), raw[offset + 8 : offset + 8 + size]
        offset += 8 + size
