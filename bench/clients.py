"""The benchmark clients: the least code that sends a line and reads the answer line.

Every server is measured through the same client, and it does not decode JSON (berthd's own clients
do), so the figures are the servers' and not the client's. `LineSocket` blocks, for timing one request
at a time; `LineStream` is the trio one, for many connections at once.
"""

from __future__ import annotations

import socket
from pathlib import Path
from types import TracebackType

import trio

from bench.processes import BenchError

PING = b"ping\n"
PONG = b'{"ok":true,"output":"pong"}'
OK_PREFIX = b'{"ok":true'  # msgspec writes `ok` first: a successful answer starts so
READ_SIZE = 65536
IO_TIMEOUT = 10.0


def check_pong(answer: bytes, server: str) -> None:
    if answer != PONG:
        raise BenchError(f"{server} answered `ping` with {answer[:200]!r}, not {PONG!r}")


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
