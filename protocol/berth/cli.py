"""`berth`: berthd's command-line client.

    berth [--socket PATH] [--json] COMMAND [ARG ...]
    berth [--socket PATH] upload APP FILE... [--executable NAME] [--chunk-size BYTES] [options] [-- ARG ...]

Sends the command (as a JSON list of words, so nothing needs quoting), prints events as they come and
then the output; `--json` prints the raw lines. Exits 0 when the command succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from berth.client import Client, CommandFailed
from berth.messages import Response
from berth.paths import client_socket_path
from berth.upload import DEFAULT_CHUNK, upload_files


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


def _chunk_size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{size}: a chunk has at least 1 byte")
    return size


def _placed(argument: str) -> str:
    """Where a FILE goes in the app: its path as given when relative and inside, else its name."""
    normal = os.path.normpath(argument)
    if os.path.isabs(normal) or normal == ".." or normal.startswith("../"):
        return os.path.basename(normal)
    return normal


def _upload(socket: str | None, args: list[str]) -> int:
    """`berth upload APP FILE... [--executable NAME] [--chunk-size BYTES] [source options] [-- ARG ...]`"""
    parser = argparse.ArgumentParser(
        prog="berth upload",
        allow_abbrev=False,
        description="Upload an executable in chunks, or several files as one group (--executable: the one"
        " that runs). Source options (--env, --cwd, ...) go after the files.",
    )
    parser.add_argument("app")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--executable", metavar="NAME", help="the file that runs (with several FILEs)")
    parser.add_argument(
        "--chunk-size", type=_chunk_size, default=DEFAULT_CHUNK, metavar="BYTES",
        help="bytes a chunk (default 1 MiB; less when berthd's --max-line takes less)",
    )  # fmt: skip
    tail: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, tail = args[:cut], args[cut:]
    known, rest = parser.parse_known_args(args)
    rest += tail
    files = [(_placed(argument) if len(known.files) > 1 else Path(argument).name, Path(argument))
             for argument in known.files]  # fmt: skip
    names = [name for name, _ in files]
    if len(set(names)) < len(names):
        parser.error(f"two FILEs would go to the same place: {', '.join(names)}")
    executable = known.executable
    if executable is not None:
        matches = [
            name for (name, _), given in zip(files, known.files, strict=True) if executable in (name, given)
        ]
        if not matches:
            parser.error(f"--executable {executable}: not one of the FILEs ({', '.join(names)})")
        executable = matches[0]
    elif len(files) > 1:
        parser.error("several FILEs go as a group: name the one that runs with --executable NAME")
    try:
        with Client(socket) as client:
            result = upload_files(client, known.app, files, executable, rest, known.chunk_size)
    except CommandFailed as exc:
        print(exc.response.output, file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"berth: upload failed: {exc}", file=sys.stderr)
        return 1
    if result.get("files"):
        print(
            f"{known.app}: {len(result['files'])} files ({result['size']} bytes), {result['executable']} runs"
        )
    else:
        print(f"{known.app}: {result['executable']} ({result['size']} bytes, sha256 {result['upload_hash']})")
    return 0


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
ALIASES = {"-f": "--tail", "--follow": "--tail"}  # for `logs`, as docker and journalctl spell following


def _client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("berthd")
    except PackageNotFoundError:  # not installed as a distribution (run from a source tree)
        return "unknown"


def _unreachable(path: str, exc: BaseException) -> int:
    print(
        f"berth: cannot reach berthd at {path}: {exc}\n"
        "berth: start berthd, or name its socket with --socket PATH or BERTHD_SOCK_PATH",
        file=sys.stderr,
    )
    return EXIT_UNREACHABLE


def _version(socket: str | None) -> int:
    print(f"berth {_client_version()}")
    try:
        with Client(socket) as client:
            answer = client.call("version")
        if answer.ok and answer.data:
            print(f"berthd {answer.data.get('version')}")
    except (OSError, ConnectionError):
        print("berthd: not reachable")
    return EXIT_OK


def _run(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="berth",
        description="Send one command to berthd. Exit codes: 0 ok, 1 the command failed, 2 usage,"
        " 3 cannot reach berthd, 130 interrupted.",
    )
    parser.add_argument("--socket", metavar="PATH", help="berthd's socket (default: $BERTHD_SOCK_PATH, ...)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON lines")
    parser.add_argument("--version", action="store_true", help="the client's version and berthd's")
    parser.add_argument("command", nargs="?", help="a berthd command, such as apps:create")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args(argv)
    if options.version:
        return _version(options.socket)
    if options.command is None:
        parser.print_help()
        return EXIT_USAGE
    if options.command == "upload":
        return _upload(options.socket, options.args)
    args = [ALIASES.get(word, word) for word in options.args] if options.command == "logs" else options.args
    words = [options.command, *args]
    path = str(options.socket or client_socket_path())
    response: Response | None = None
    try:
        with Client(path) as client:
            for message in client.stream(words):
                if options.json:
                    sys.stdout.write(msgspec.json.encode(message).decode() + "\n")
                    sys.stdout.flush()
                if isinstance(message, Response):
                    response = message
                elif not options.json:
                    _print_event(message)
    except (OSError, ConnectionError) as exc:
        return _unreachable(path, exc)
    if response is None:
        return _unreachable(path, ConnectionError("the connection closed before an answer"))
    if not options.json and response.output:
        print(response.output, file=sys.stdout if response.ok else sys.stderr)
    return EXIT_OK if response.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; Ctrl-C and a closed reader (`| head`) end it quietly."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away: stop writing, and keep Python's flush at exit from complaining
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
