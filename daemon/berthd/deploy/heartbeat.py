"""An ExApp's heartbeat: `GET http://HOST:PORT/heartbeat` answers `{"status": "ok"}` when it is up."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

HEARTBEAT_TIMEOUT = 60.0


def heartbeat_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """GET http://HOST:PORT/heartbeat answers {"status": "ok"}."""
    url = f"http://{host}:{port}/heartbeat"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - http to the app itself
            body = json.loads(answer.read(65536) or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("status") == "ok"


def wait_heartbeat(host: str, port: int, timeout: float = HEARTBEAT_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if heartbeat_ok(host, port):
            return True
        time.sleep(0.5)
    return False
