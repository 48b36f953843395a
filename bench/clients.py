"""The benchmark clients: the least code that sends a line and reads the answer line.

Every server is measured through the same client, and it does not decode JSON (berthd's own clients
do), so the figures are the servers' and not the client's. `LineSocket` blocks, for timing one request
at a time; `LineStream` is the trio one, for many connections at once. `XmlRpcClient` is the same for
supervisord: one HTTP POST a call on a kept-alive connection, its XML answer returned undecoded.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from bench.processes import BenchError

PING = b"ping\n"
FINAL_PREFIX = b'{"ok":'  # the final answer to a command; event lines before it start otherwise
PONG = b'{"ok":true,"output":"pong"}'
OK_PREFIX = b'{"ok":true'  # msgspec writes `ok` first: a successful answer starts so
READ_SIZE = 65536
IO_TIMEOUT = 10.0


def check_pong(answer: bytes, server: str) -> None:
    if answer != PONG:
        raise BenchError(f"{server} answered `ping` with {answer[:200]!r}, not {PONG!r}")


def request_ok(conn: LineSocket, line: str) -> bytes:
    """The answer to a berthd command that has to succeed."""
    answer = conn.request(f"{line}\n".encode())
    if not answer.startswith(OK_PREFIX):
        raise BenchError(f"berthd answered {line} with {answer[:300]!r}")
    return answer


class LineSocket:
    """One blocking connection."""

    def __init__(self, path: Path, timeout: float = IO_TIMEOUT) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._buffer = b""

    def __enter__(self) -> LineSocket:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._sock.close()

    def request(self, line: bytes) -> bytes:
        self._sock.sendall(line)
        return self._read_line()

    def final(self, line: bytes) -> bytes:
        """The final answer to a streaming command (`run`), past its events."""
        self._sock.sendall(line)
        while not (answer := self._read_line()).startswith(FINAL_PREFIX):
            pass
        return answer

    def _read_line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(READ_SIZE)
            if not chunk:
                raise BenchError("the server closed the connection before answering")
            self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(b"\n")
        return answer


class LineStream:
    """One trio connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    @classmethod
    async def connect(cls, path: Path) -> LineStream:
        return cls(await trio.open_unix_socket(str(path)))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def request(self, line: bytes) -> bytes:
        await self._stream.send_all(line)
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(READ_SIZE)
            if not chunk:
                raise BenchError("the server closed the connection before answering")
            self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(b"\n")
        return answer


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class XmlRpcClient:
    """One kept-alive connection to supervisord's XML-RPC interface on its UNIX socket."""

    def __init__(self, path: Path, timeout: float = IO_TIMEOUT) -> None:
        self._conn = UnixHTTPConnection(path, timeout)

    def __enter__(self) -> XmlRpcClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._conn.close()

    def request(self, method: str, *params: Any) -> bytes:
        body = xmlrpc.client.dumps(params, method).encode()
        self._conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
        response = self._conn.getresponse()
        answer = response.read()
        if response.status != 200:
            raise BenchError(f"supervisord answered {method} with HTTP {response.status}: {answer[:200]!r}")
        return answer

    def call(self, method: str, *params: Any) -> Any:
        """The decoded result; a fault is a `BenchError`."""
        try:
            (result,), _ = xmlrpc.client.loads(self.request(method, *params))
        except xmlrpc.client.Fault as fault:
            raise BenchError(f"supervisord answered {method} with a fault: {fault.faultString}") from None
        return result
