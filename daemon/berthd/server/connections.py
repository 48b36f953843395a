"""The socket server: accepts connections, frames lines, hands each to the dispatcher, writes answers.

It knows sockets and JSON lines, not apps. Each connection is a nursery with a reader task and the
command loop; commands on one connection run in order. Shutdown stops accepting, stops reading, lets
each connection finish the command in progress, then closes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
from collections.abc import Iterable

import trio

from berth.framing import LineSplitter, TooLong
from berth.messages import Event, Response, encode_line
from berthd.log import LOG
from berthd.server.context import Services
from berthd.server.dispatch import dispatch
from berthd.server.peercred import Peer, peer_of

# accept() failures that mean "out of resources for now": wait a little and go on (as trio does).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_CAPACITY_SLEEP = 0.1
READ_SIZE = 65536
DRAIN_LIMIT = 1024 * 1024

BUSY = Response(False, "Too many clients: try again later", error="busy")


class ClientGone(Exception):
    """The client closed its end while we were answering."""


class Connection:
    def __init__(self, server: Server, stream: trio.SocketStream, peer: Peer) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        self.receive_scope = trio.CancelScope()  # cancelled at shutdown to stop waiting for input
        self.gone = False

    async def send(self, message: Response | Event) -> None:
        if self.gone:
            raise ClientGone
        try:
            await self.stream.send_all(encode_line(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True
            raise ClientGone from None

    def client_gone(self) -> bool:
        """Has the client closed its end completely? (A half-close, as `nc -N` does, is not leaving.)"""
        if self.gone:
            return True
        poller = select.poll()
        poller.register(self.stream.socket.fileno(), select.POLLHUP)
        if any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0)):
            self.gone = True
        return self.gone

    async def serve(self) -> None:
        """Read a batch, answer its complete lines in order, read again: one task, no hand-offs."""
        splitter = LineSplitter(self.server.services.config.max_line)
        while not self.gone:
            if self.server.draining:
                # Shutting down: lines the client sent before the signal are still answered.
                await self._answer_all(splitter.feed(self._already_received()))
                return
            data = b""
            with trio.CancelScope() as self.receive_scope:
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    await self._answer_all(splitter.end())
                    return
            await self._answer_all(splitter.feed(data))

    async def _answer_all(self, lines: Iterable[bytes | TooLong]) -> None:
        for line in lines:
            if self.gone:
                return
            await self._answer(line)

    def _already_received(self) -> bytes:
        """What the kernel holds for us right now, read without waiting."""
        chunks: list[bytes] = []
        with socket.socket(fileno=os.dup(self.stream.socket.fileno())) as sock:
            while sum(map(len, chunks)) < DRAIN_LIMIT:
                try:
                    data = sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)

    async def _answer(self, line: bytes | TooLong) -> None:
        async def emit(event: Event) -> None:
            await self.send(event)

        response = await dispatch(self.server.services, line, self.peer, emit, self.client_gone)
        if response is None:
            return
        try:
            await self.send(response)
        except ClientGone:
            LOG.debug("client %s left before its answer", self.peer)


class Server:
    def __init__(self, services: Services, sock: socket.socket) -> None:
        self.services = services
        self.listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self.connections: set[Connection] = set()
        self.draining = False
        self._accept_scope = trio.CancelScope()
        self.idle = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            with self._accept_scope:
                while True:
                    try:
                        stream = await self.listener.accept()
                    except OSError as exc:
                        if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                            LOG.error("accept() failed (%s); retrying in %.1f s", exc, ACCEPT_CAPACITY_SLEEP)
                            await trio.sleep(ACCEPT_CAPACITY_SLEEP)
                            continue
                        raise
                    nursery.start_soon(self._serve_one, stream)
            await self.listener.aclose()

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        peer = peer_of(stream.socket)  # type: ignore[arg-type]
        async with stream:
            if len(self.connections) >= self.services.config.max_clients:
                LOG.warning("refusing %s: %d clients already", peer, len(self.connections))
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(encode_line(BUSY))
                return
            connection = Connection(self, stream, peer)
            self.connections.add(connection)
            try:
                await connection.serve()
            except Exception:
                logging.getLogger("berthd").exception("connection of %s failed", peer)
            finally:
                self.connections.discard(connection)
                if self.draining and not self.connections:
                    self.idle.set()

    def shutdown(self) -> None:
        """Stop accepting and reading; connections end after the command each is running."""
        self.draining = True
        self._accept_scope.cancel()
        for connection in self.connections:
            connection.receive_scope.cancel()
        if not self.connections:
            self.idle.set()
