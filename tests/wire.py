"""Talking to berthd with raw bytes, for tests that need exact control of the wire."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class RawConnection:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def read_message(self) -> dict[str, Any]:
        message = json.loads(self.read_line())
        assert isinstance(message, dict)
        return message

    def request(self, line: bytes) -> dict[str, Any]:
        self.send(line + b"\n")
        return self.read_message()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
