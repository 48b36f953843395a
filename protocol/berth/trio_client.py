"""A trio client: the same calls as `berth.client.Client`, for async code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trio

from berth.client import READ_SIZE, CommandFailed, EventHandler, closed_by_peer, encode_request
from berth.framing import AnswerLines
from berth.messages import Response, decode_line
from berth.paths import client_socket_path


class TrioClient:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = str(path or client_socket_path())
        self._stream: trio.SocketStream | None = None
        self._lines = AnswerLines()

    async def __aenter__(self) -> TrioClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        if self._stream is not None and closed_by_peer(self._stream.socket.fileno()):
            await self.aclose()  # berthd closed it while nothing was asked (--idle-timeout): a new one
        if self._stream is None:
            self._stream = await trio.open_unix_socket(self.path)
            self._lines = AnswerLines()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def _read_line(self) -> bytes:
        assert self._stream is not None
        while (line := self._lines.next_line()) is None:
            chunk = await self._stream.receive_some(READ_SIZE)
            if not chunk:
                raise ConnectionError("berthd closed the connection before answering")
            self._lines.feed(chunk)
        return line

    async def stream(
        self, command: str | Sequence[str], named: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any] | Response]:
        await self.connect()
        assert self._stream is not None
        await self._stream.send_all(encode_request(command, named))
        while True:
            message = decode_line(await self._read_line())
            yield message
            if isinstance(message, Response):
                return

    async def call(
        self,
        command: str | Sequence[str],
        named: dict[str, Any] | None = None,
        *,
        check: bool = False,
        on_event: EventHandler | None = None,
    ) -> Response:
        async for message in self.stream(command, named):
            if isinstance(message, Response):
                if check and not message.ok:
                    raise CommandFailed(message)
                return message
            if on_event is not None:
                on_event(message)
        raise ConnectionError("berthd closed the connection before answering")
