"""The socket server: accepts connections, frames lines, hands each to the dispatcher, writes answers.

It knows sockets and JSON lines, not apps. Each connection is a nursery with a reader task and the
command loop; commands on one connection run in order. Shutdown stops accepting, stops reading, lets
each connection finish the command in progress, then closes.

Connections are a shared resource: a connection that sends no command for `--idle-timeout` seconds
after its last answer is closed (one that waits on a running command or a log follower is busy, not
idle; a line trickled in byte by byte does not count until it is complete), and no uid but root may
hold more than its share (`--max-clients-per-uid`). The last slot is root's: however many users flood
berthd, root can still connect. Nor may a uid but root send more commands than its share (see
`berthd.server.fairness`): a connection told `busy` is read again once the wait it was told is over.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Iterable

import trio

from berth.framing import LineSplitter, TooLong
from berth.messages import Event, Response, encode_line
from berthd.log import LOG
from berthd.server.context import Services
from berthd.server.dispatch import dispatch
from berthd.server.fairness import ROOT_UID, CommandRates, Pace
from berthd.server.peercred import Peer, PeerNames, peer_of

# accept() failures that mean "out of resources for now": wait a little and go on (as trio does).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_CAPACITY_SLEEP = 0.1
READ_SIZE = 65536
DRAIN_LIMIT = 1024 * 1024

ROOT_SLOTS = 1  # slots of --max-clients that only root may take
IDLE_CHECK_MAX = 1.0  # seconds between looks for idle connections, at most


def busy(why: str) -> Response:
    return Response(False, f"{why}: try again later", error="busy")


class ClientGone(Exception):
    """The client closed its end while we were answering."""


class Connection:
    def __init__(self, server: Server, stream: trio.SocketStream, peer: Peer) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        # cancelled at shutdown, or when idle for too long, to stop waiting for input
        self.receive_scope = trio.CancelScope()
        self.gone = False
        self.idle_since: float | None = trio.current_time()  # None while a command runs
        self.expired = False  # idle past --idle-timeout: closed
        self.pace = None if peer.uid == ROOT_UID else Pace(server.rates, peer.uid)

    async def send(self, message: Response | Event) -> None:
        if self.gone:
            raise ClientGone
        try:
            # a client that reads nothing for --idle-timeout while berthd has an answer for it holds its
            # slot as surely as one that sends nothing: it is let go (what it asked still runs to its end)
            limit = self.server.services.config.idle_timeout
            with trio.move_on_after(limit) as waited:
                await self.stream.send_all(encode_line(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True
            raise ClientGone from None
        if waited.cancelled_caught:
            LOG.info("closing the connection of %s: it read nothing for %.0f s", self.peer, limit)
            self.gone = True
            raise ClientGone

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
                if self.expired:
                    return
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    await self._answer_all(splitter.end())
                    return
            if self.expired:
                return
            await self._answer_all(splitter.feed(data))

    async def _answer_all(self, lines: Iterable[bytes | TooLong]) -> None:
        idle_since = self.idle_since
        for line in lines:
            if self.gone:
                return
            self.idle_since = None  # (a connection told to wait, with a line waiting, is not idle either)
            if self.pace is not None and self.pace.resume_at:
                await self._rest(self.pace)
            if await self._answer(line):
                idle_since = trio.current_time()
        # a blank line, or a part of one, is no command: the idle time runs on from the last answer
        self.idle_since = idle_since

    async def _rest(self, pace: Pace) -> None:
        """Told `busy`: the next line waits for the time the caller was told (shutdown or expiry end it)."""
        wait = pace.rest()
        if self.server.draining or self.expired:
            return
        with trio.CancelScope() as self.receive_scope:
            await trio.sleep(wait)

    def expire(self) -> None:
        """Idle for too long: stop waiting for input, and close."""
        self.expired = True
        self.receive_scope.cancel()

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

    async def _answer(self, line: bytes | TooLong) -> bool:
        async def emit(event: Event) -> None:
            await self.send(event)

        # the caller's groups as the system has them now (kept a few seconds), not as when it connected
        peer = await self.server.names.identify(self.peer)
        response = await dispatch(self.server.services, line, peer, emit, self.client_gone, self.pace)
        if response is None:
            return False
        try:
            await self.send(response)
        except ClientGone:
            LOG.debug("client %s left before its answer", self.peer)
        return True


class Server:
    def __init__(self, services: Services, sock: socket.socket) -> None:
        self.services = services
        self.listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self.connections: set[Connection] = set()
        self.per_uid: Counter[int] = Counter()
        self.rates = CommandRates(services.config)
        self.names = PeerNames()
        self.draining = False
        self._accept_scope = trio.CancelScope()
        self.idle = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            nursery.start_soon(self._close_idle_connections)
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
        peer = await self.names.identify(peer_of(stream.socket))  # type: ignore[arg-type]
        async with stream:
            refusal = self._refusal(peer)
            if refusal is not None:
                LOG.warning("refusing %s: %s", peer, refusal)
                self.services.metrics.refused()
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(encode_line(busy(refusal)))
                return
            connection = Connection(self, stream, peer)
            self.connections.add(connection)
            if not self.per_uid[peer.uid]:
                self.rates.connected(peer.uid)
            self.per_uid[peer.uid] += 1
            self.services.metrics.accepted()
            try:
                await connection.serve()
            except Exception:
                logging.getLogger("berthd").exception("connection of %s failed", peer)
            finally:
                self.services.metrics.closed()
                self.connections.discard(connection)
                self.per_uid[peer.uid] -= 1
                if not self.per_uid[peer.uid]:
                    del self.per_uid[peer.uid]
                    self.rates.forget(peer.uid, time.perf_counter())
                if self.draining and not self.connections:
                    self.idle.set()

    async def _close_idle_connections(self) -> None:
        """One task for all connections (no timer per read on the hot path): a tenth of the timeout late at most."""
        timeout = self.services.config.idle_timeout
        period = min(IDLE_CHECK_MAX, timeout / 10)
        while not self.draining:
            await trio.sleep(period)
            now = trio.current_time()
            for connection in list(self.connections):
                since = connection.idle_since
                if since is not None and now - since >= timeout and not connection.expired:
                    LOG.info("closing the connection of %s: idle for %.0f s", connection.peer, now - since)
                    connection.expire()

    def _refusal(self, peer: Peer) -> str | None:
        """Why this caller may not have another connection now, or None."""
        config = self.services.config
        total = len(self.connections)
        if total >= config.max_clients:
            return f"Too many clients ({total})"
        if peer.uid == ROOT_UID:
            return None
        if total >= config.max_clients - min(ROOT_SLOTS, config.max_clients - 1):
            return f"Too many clients ({total}; the last slot is kept for root)"
        if self.per_uid[peer.uid] >= config.per_uid_clients:
            return f"Too many connections from uid {peer.uid} ({self.per_uid[peer.uid]})"
        return None

    def shutdown(self) -> None:
        """Stop accepting and reading; connections end after the command each is running."""
        self.draining = True
        self._accept_scope.cancel()
        for connection in self.connections:
            connection.receive_scope.cancel()
        if not self.connections:
            self.idle.set()
