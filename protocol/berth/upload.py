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
from collections.abc import Callable
from pathlib import Path

from berth.client import Client, CommandFailed

DEFAULT_CHUNK = 512 * 1024  # 700 KB of base64: well under berthd's 1 MiB line limit
IN_FLIGHT = 4


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
        answer = client.call(["upload:status", session])
        if answer.ok:
            missing = list(answer.data["missing"])
            total = int(answer.data["total_chunks"])
            chunk_size = int(answer.data["chunk_size"])
        else:
            session = None
    if session is None:
        total = max(1, -(-size // chunk_size))
        answer = client.call(
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
    in_flight = 0

    def settle() -> None:
        nonlocal done, in_flight
        answer = client.receive()
        in_flight -= 1
        if not answer.ok:
            raise CommandFailed(answer)
        done += 1
        progress(done, total)

    with open(path, "rb") as file:
        for index in missing:
            file.seek(index * chunk_size)
            data = base64.b64encode(file.read(chunk_size)).decode()
            # a few chunks in flight: berthd stores one while the next is being encoded and sent
            client.send(["upload:chunk", session, str(index), data])
            in_flight += 1
            if in_flight >= IN_FLIGHT:
                settle()
        while in_flight:
            settle()
    try:
        answer = client.call(["upload:end", session], check=True)
    except CommandFailed:
        state.unlink(missing_ok=True)
        raise
    state.unlink(missing_ok=True)
    return dict(answer.data)
