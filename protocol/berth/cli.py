"""`berth`: berthd's command-line client.

    berth [--socket PATH] [--json] COMMAND [ARG ...]

Sends the command (as a JSON list of words, so nothing needs quoting), prints events as they come and
then the output; `--json` prints the raw lines. Exits 0 when the command succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from berth.client import Client, CommandFailed
from berth.messages import Response
from berth.upload import DEFAULT_CHUNK, upload_file


def _print_event(event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "log":
        stream = sys.stderr if event.get("stream") == "stderr" else sys.stdout
        print(event.get("line", ""), file=stream, flush=True)
    elif kind == "progress":
        done, total = event.get("done"), event.get("total")
        figures = f" {done}/{total}" if total else ""
        print(f"-----> {event.get('stage')}{figures}", file=sys.stderr, flush=True)
    elif kind == "queued":
        print(f"-----> queued at position {event.get('position')}", file=sys.stderr, flush=True)
    elif kind == "state":
        print(f"-----> {event.get('process')}: {event.get('state')}", file=sys.stderr, flush=True)
    elif kind == "audit":  # the line as the audit log holds it
        print(msgspec.json.encode(event.get("entry")).decode(), flush=True)


def _upload(socket: str | None, args: list[str]) -> int:
    """`berth upload APP FILE [--chunk-size BYTES] [source options] [-- ARG ...]`"""
    parser = argparse.ArgumentParser(prog="berth upload", description="Upload an executable in chunks.")
    parser.add_argument("app")
    parser.add_argument("file", type=Path)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    tail: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, tail = args[:cut], args[cut:]
    known, rest = parser.parse_known_args(args)
    rest += tail
    try:
        with Client(socket) as client:
            result = upload_file(client, known.app, known.file, rest, known.chunk_size)
    except CommandFailed as exc:
        print(exc.response.output, file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"berth: upload failed: {exc}", file=sys.stderr)
        return 1
    print(f"{known.app}: {result['executable']} ({result['size']} bytes, sha256 {result['upload_hash']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berth", description="Send one command to berthd.")
    parser.add_argument("--socket", metavar="PATH", help="berthd's socket (default: $BERTHD_SOCK_PATH, ...)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON lines")
    parser.add_argument("command", help="a berthd command, such as apps:create")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args(argv)
    if options.command == "upload":
        return _upload(options.socket, options.args)
    words = [options.command, *options.args]
    try:
        with Client(options.socket) as client:
            response: Response | None = None
            for message in client.stream(words):
                if options.json:
                    sys.stdout.write(msgspec.json.encode(message).decode() + "\n")
                    sys.stdout.flush()
                if isinstance(message, Response):
                    response = message
                elif not options.json:
                    _print_event(message)
    except (OSError, ConnectionError) as exc:
        print(
            f"berth: cannot talk to berthd at {options.socket or 'the default socket'}: {exc}",
            file=sys.stderr,
        )
        return 1
    assert response is not None
    if not options.json and response.output:
        print(response.output, file=sys.stdout if response.ok else sys.stderr)
    return 0 if response.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
