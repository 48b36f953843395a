"""`berth upload APP FILE [-- ARG ...]`: send a file in chunks, resuming an interrupted upload.

The session of an unfinished upload is remembered in ~/.cache/berth/uploads (by socket, app, file,
size and modification time), so running the same command again sends only the missing chunks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from berth.client import Client, CommandFailed
from berth.messages import TOO_MANY_COMMANDS, Response

DEFAULT_CHUNK = 512 * 1024  # 700 KB of base64: well under berthd's 1 MiB line limit
IN_FLIGHT = 4
MAX_BUSY_IN_A_ROW = 1000  # refusals one after the other before the upload gives up


def _state_file(socket_path: str, app: str, path: Path) -> Path:
    info = path.stat()
    key = json.dumps([os.path.abspath(socket_path), app, str(path.resolve()), info.st_size, info.st_mtime_ns])
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "berth" / "uploads"
    return folder / hashlib.sha256(key.encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _over_the_bound(answer: Response) -> bool:
    """Refused, not run: this user sent more commands a second than berthd takes from one user. berthd reads
    the connection's next line only when the user's turn comes, so sending it again waits for that turn."""
    return answer.error == "busy" and answer.output.startswith(TOO_MANY_COMMANDS)


def _call(client: Client, words: list[str], check: bool = False) -> Response:
    """`client.call(words)`, sent again while it is refused for the bound of commands a second."""
    for _ in range(MAX_BUSY_IN_A_ROW):
        answer = client.call(words)
        if not _over_the_bound(answer):
            break
    if check and not answer.ok:
        raise CommandFailed(answer)
    return answer


def progress_bar(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} chunks")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def upload_file(
    client: Client,
    app: str,
    path: Path,
    options: list[str],
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] = progress_bar,
) -> dict[str, object]:
    size = path.stat().st_size
    state = _state_file(client.path, app, path)
    session = None
    missing: list[int] | None = None
    if state.exists():
        session = state.read_text().strip()
        answer = _call(client, ["upload:status", session])
        if answer.ok:
            missing = list(answer.data["missing"])
            total = int(answer.data["total_chunks"])
            chunk_size = int(answer.data["chunk_size"])
        else:
            session = None
    if session is None:
        total = max(1, -(-size // chunk_size))
        answer = _call(
            client,
            ["upload:begin", app, path.name, str(size), str(total), "--sha256", _sha256(path), *options],
            check=True,
        )
        session = str(answer.data["session_id"])
        chunk_size = int(answer.data["chunk_size"])
        missing = list(range(total))
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(session)
    assert missing is not None
    done = total - len(missing)
    progress(done, total)
    in_flight: deque[int] = deque()  # the chunks sent and not answered yet, in order
    busy_in_a_row = 0

    with open(path, "rb") as file:

        def send(index: int) -> None:
            file.seek(index * chunk_size)
            data = base64.b64encode(file.read(chunk_size)).decode()
            client.send(["upload:chunk", session, str(index), data])
            in_flight.append(index)

        def settle() -> None:
            nonlocal done, busy_in_a_row
            index = in_flight.popleft()
            answer = client.receive()
            if _over_the_bound(answer) and busy_in_a_row < MAX_BUSY_IN_A_ROW:
                busy_in_a_row += 1
                send(index)
                return
            if not answer.ok:
                raise CommandFailed(answer)
            busy_in_a_row = 0
            done += 1
            progress(done, total)

        for index in missing:
            # a few chunks in flight: berthd stores one while the next is being encoded and sent
            send(index)
            if len(in_flight) >= IN_FLIGHT:
                settle()
        while in_flight:
            settle()
    try:
        answer = _call(client, ["upload:end", session], check=True)
    except CommandFailed:
        state.unlink(missing_ok=True)
        raise
    state.unlink(missing_ok=True)
    return dict(answer.data)
