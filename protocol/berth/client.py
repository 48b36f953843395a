"""A blocking Python client: send a command, read its events, return its final answer.

from berth import Client
with Client("/var/run/berthd/berthd.sock") as berth:
    print(berth.call("apps:create python-app").output)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from berth.framing import AnswerLines
from berth.messages import JsonRequest, Response, decode_line
from berth.paths import client_socket_path

READ_SIZE = 65536

EventHandler = Callable[[dict[str, Any]], None]


def closed_by_peer(fd: int) -> bool:
    """Has berthd closed this connection (as it does an idle one)? Looked at without reading or waiting."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True


class CommandFailed(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.output)
        self.response = response


def encode_request(
    command: str | Sequence[str], named: dict[str, Any] | None = None, request_id: str | int | None = None
) -> bytes:
    """A text command goes as it is; a list of words (or named parameters) goes in the JSON form."""
    if isinstance(command, str) and named is None and request_id is None:
        if "\n" in command or "\r" in command:
            raise ValueError("a text command is one line; pass a list of words instead")
        return command.encode() + b"\n"
    if isinstance(command, str):
        words = [command] if named is not None else command.split()
    else:
        words = list(command)
    if not words:
        raise ValueError("empty command")
    args: list[str] | dict[str, Any] = named if named is not None else words[1:]
    return msgspec.json.encode(JsonRequest(words[0], args, request_id)) + b"\n"


class Client:
    def __init__(self, path: str | Path | None = None, timeout: float | None = None) -> None:
        self.path = str(path or client_socket_path())
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lines = AnswerLines()
        self._unanswered = 0  # commands sent whose final answer has not been read

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connection(self) -> socket.socket:
        if self._sock is not None and not self._unanswered and closed_by_peer(self._sock.fileno()):
            self.close()  # berthd closed it while nothing was asked (--idle-timeout): a new one
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            self._sock = sock
            self._lines = AnswerLines()
            self._unanswered = 0
        return self._sock

    def _read_line(self) -> bytes:
        sock = self._connection()
        while (line := self._lines.next_line()) is None:
            chunk = sock.recv(READ_SIZE)
            if not chunk:
                self.close()
                raise ConnectionError("berthd closed the connection before answering")
            self._lines.feed(chunk)
        return line

    def send(
        self,
        command: str | Sequence[str],
        named: dict[str, Any] | None = None,
        request_id: str | int | None = None,
    ) -> None:
        """Send a command without waiting: berthd answers a connection's commands in order, so several
        may be in flight; read their answers with `receive`."""
        self._connection().sendall(encode_request(command, named, request_id))
        self._unanswered += 1

    def receive(self, on_event: EventHandler | None = None) -> Response:
        """The final answer to the oldest command not answered yet (its events go to `on_event`)."""
        while True:
            message = decode_line(self._read_line())
            if isinstance(message, Response):
                self._unanswered -= 1
                return message
            if on_event is not None:
                on_event(message)

    def stream(
        self,
        command: str | Sequence[str],
        named: dict[str, Any] | None = None,
        request_id: str | int | None = None,
    ) -> Iterator[dict[str, Any] | Response]:
        """Yields each event (a dict) as it arrives, then the final `Response`."""
        self.send(command, named, request_id)
        while True:
            message = decode_line(self._read_line())
            if isinstance(message, Response):
                self._unanswered -= 1
            yield message
            if isinstance(message, Response):
                return

    def call(
        self,
        command: str | Sequence[str],
        named: dict[str, Any] | None = None,
        *,
        check: bool = False,
        on_event: EventHandler | None = None,
    ) -> Response:
        for message in self.stream(command, named):
            if isinstance(message, Response):
                if check and not message.ok:
                    raise CommandFailed(message)
                return message
            if on_event is not None:
                on_event(message)
        raise AssertionError("unreachable")
