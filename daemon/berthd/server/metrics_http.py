"""`--metrics-listen ADDR:PORT`: the metrics page at `GET /metrics` over HTTP/1.1, on trio sockets.

The page is OpenMetrics when the request's Accept header asks for it (Prometheus' does), else the same
counts in Prometheus' older text format, as the client library's own server negotiates.

A responder this small on purpose: one request a connection, `GET /metrics` or 404, a request head of
at most `MAX_REQUEST` bytes read within `READ_TIMEOUT` seconds, `MAX_CONNECTIONS` at once (more are
closed at once). Nothing here blocks the event loop; a slow or oversized client only holds its own task.
The page is not authenticated: whoever can reach the address reads berthd's counts.
"""

from __future__ import annotations

import contextlib

import trio

from berthd.log import LOG
from berthd.server.context import Services
from berthd.server.exposition import CONTENT_TYPE, TEXT_CONTENT_TYPE, render

MAX_REQUEST = 8192  # bytes of request line and headers
READ_TIMEOUT = 5.0  # seconds for the whole request head
MAX_CONNECTIONS = 16


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` (checked already by the config's pattern)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request head, or None if it is over `MAX_REQUEST`, late or cut short."""
    received = b""
    with trio.move_on_after(READ_TIMEOUT):
        while b"\r\n\r\n" not in received and len(received) <= MAX_REQUEST:
            data = await stream.receive_some(MAX_REQUEST + 1 - len(received) or 1)
            if not data:
                return None
            received += data
        return received if b"\r\n\r\n" in received and len(received) <= MAX_REQUEST else b""
    return None


class MetricsHttp:
    """Opened before berthd serves (a taken or bad address stops the start, as the socket's would)."""

    def __init__(self, services: Services, listeners: list[trio.SocketListener]) -> None:
        self.services = services
        self.listeners = listeners
        self.slots = trio.Semaphore(MAX_CONNECTIONS)

    @classmethod
    async def open(cls, services: Services, address: str) -> MetricsHttp:
        host, port = parse_address(address)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve the metrics at {address}: {exc.strerror}") from None
        LOG.info("metrics at http://%s/metrics", address)
        return cls(services, listeners)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.serve_listeners(self._serve_one, self.listeners)

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.slots.value == 0:
                return  # the slots are taken: closed, not queued
            async with self.slots:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    head = await _read_head(stream)
                    if head is None:
                        return
                    with trio.move_on_after(READ_TIMEOUT):
                        await stream.send_all(self._answer(head))

    def _answer(self, head: bytes) -> bytes:
        if not head:
            return _response("431 Request Header Fields Too Large", b"request too large\n")
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if target != b"/metrics":
            return _response("404 Not Found", b"not found: try /metrics\n")
        if method != b"GET":
            return _response("405 Method Not Allowed", b"only GET\n")
        # what Prometheus asks for (its Accept header names OpenMetrics first), else the older text format
        openmetrics = b"application/openmetrics-text" in head.lower()
        page = render(self.services.metrics, self.services.processes, openmetrics).encode()
        return _response("200 OK", page, CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE)
