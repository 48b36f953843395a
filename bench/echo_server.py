"""The baseline server: bare trio on a UNIX socket, answering every line with one fixed JSON line.

It is berthd's transport with nothing behind it (no framing limits, parsing, dispatch, logging or store),
so berthd's figures over its figures are what berthd adds. `python -m bench.echo_server SOCKET`
"""

from __future__ import annotations

import argparse
import contextlib
import socket
from collections.abc import Sequence

import trio

ANSWER = b'{"ok":true,"output":"pong"}\n'
READ_SIZE = 65536
BACKLOG = 512


async def answer_lines(stream: trio.SocketStream) -> None:
    # The content of a line does not matter, only that it ended: one answer per newline received.
    async with stream:
        while True:
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            lines = data.count(b"\n")
            if lines:
                try:
                    await stream.send_all(ANSWER * lines)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return


async def serve(path: str) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(BACKLOG)
    await trio.serve_listeners(answer_lines, [trio.SocketListener(sock)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__)
    parser.add_argument("socket", help="the socket's path (must not exist)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
