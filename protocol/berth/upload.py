"""`berth upload APP FILE... [--executable NAME] [-- ARG ...]`: send files in chunks, resuming an
interrupted upload.

One file becomes the app's executable; several go as an upload group, each placed by its path, the one
named `--executable` the one that runs. Chunks are 1 MiB (the standalone-services seed's default), or as
given, and never more than fits in berthd's line limit: berthd refuses at `upload:begin` a chunk whose
line would be too long and says how much fits, and the upload begins again with that.

The sessions of an unfinished upload are remembered in ~/.cache/berth/uploads (by socket, app, files,
sizes and modification times), so running the same command again sends only the missing chunks. A
resume that berthd refuses (a session gone, chunks that no longer fit) forgets them, and the next try
starts afresh.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.client import Client, CommandFailed
from berth.messages import TOO_MANY_COMMANDS, Response

DEFAULT_CHUNK = 1024 * 1024  # the seed's; its upload:chunk line fits in berthd's default 2 MiB --max-line
IN_FLIGHT = 4
MAX_BUSY_IN_A_ROW = 1000  # refusals one after the other before the upload gives up

Progress = Callable[[int, int], None]


@dataclass
class Upload:
    """One file's session: where berthd has it, and what it still needs."""

    name: str  # where berthd places it: the file name, or its path in a group
    path: Path
    session: str | None = None
    chunk_size: int = DEFAULT_CHUNK
    total_chunks: int = 0
    missing: list[int] | None = None
    ended: bool = False


def _state_file(
    socket_path: str, app: str, files: Sequence[tuple[str, Path]], executable: str | None
) -> Path:
    described = []
    for name, path in files:
        info = path.stat()
        described.append([name, str(path.resolve()), info.st_size, info.st_mtime_ns])
    if len(files) == 1:  # keyed as older berth keyed a single file, so that its saved session still resumes
        key = json.dumps([os.path.abspath(socket_path), app, *described[0][1:]])
    else:
        key = json.dumps([os.path.abspath(socket_path), app, executable, described])
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "berth" / "uploads"
    return folder / hashlib.sha256(key.encode()).hexdigest()


def _over_the_bound(answer: Response) -> bool:
    """Refused, not run: this user sent more commands a second than berthd takes from one user. berthd reads
    the connection's next line only when the user's turn comes, so sending it again waits for that turn."""
    return answer.error == "busy" and answer.output.startswith(TOO_MANY_COMMANDS)


def _call(client: Client, words: list[str], check: bool = False) -> Response:
    """`client.call`, sent again while berthd says this user is over its bound of commands a second."""
    for _ in range(MAX_BUSY_IN_A_ROW):
        answer = client.call(words)
        if not _over_the_bound(answer):
            break
    if check and not answer.ok:
        raise CommandFailed(answer)
    return answer


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
    progress: Progress = progress_bar,
) -> dict[str, Any]:
    """One file, which becomes the app's executable; `upload:end`'s `data`."""
    return upload_files(client, app, [(path.name, path)], None, options, chunk_size, progress)


def upload_files(
    client: Client,
    app: str,
    files: Sequence[tuple[str, Path]],
    executable: str | None,
    options: list[str],
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress = progress_bar,
) -> dict[str, Any]:
    """`files` (where berthd places each, and where it is here): one alone, or a group whose
    `executable` (one of the names) runs. The source options go with the executable. The final
    `upload:end`'s `data` (for a group: `files`, `executable`, ...)."""
    if chunk_size < 1:
        raise ValueError(f"chunk size {chunk_size}: at least 1 byte")
    state = _state_file(client.path, app, files, executable)
    group, uploads = _resumed(client, state, files)
    try:
        if group is None and len(files) > 1:
            group = secrets.token_hex(16)
        for index, upload in enumerate(uploads):
            if upload.session is None:
                chunk_size = _begin(
                    client, app, upload, group, index, len(files), executable, options, chunk_size
                )
                _save(state, group, uploads)
        total = sum(upload.total_chunks for upload in uploads)
        done = sum(upload.total_chunks - len(upload.missing or []) for upload in uploads)
        progress(done, total)
        for upload in uploads:
            done = _send_chunks(client, upload, done, total, progress)
        answer: Response | None = None
        for upload in uploads:
            if not upload.ended:
                answer = _call(client, ["upload:end", str(upload.session)], check=True)
                upload.ended = True
        if answer is None:  # every file had ended before: the last end again completes the group
            answer = _call(client, ["upload:end", str(uploads[-1].session)], check=True)
    except CommandFailed:
        # berthd refused: these sessions cannot go on, and the next try begins afresh
        state.unlink(missing_ok=True)
        _abort(client, uploads)
        raise
    state.unlink(missing_ok=True)
    return dict(answer.data)


def _resumed(
    client: Client, state: Path, files: Sequence[tuple[str, Path]]
) -> tuple[str | None, list[Upload]]:
    """The group and sessions saved by an interrupted try, with what berthd still misses; fresh ones when
    there are none or berthd no longer has them all (those it has are then aborted)."""
    fresh = [Upload(name, path) for name, path in files]
    try:
        text = state.read_text().strip()
    except OSError:
        return None, fresh
    try:
        saved = json.loads(text)
    except ValueError:
        saved = {"group": None, "sessions": [text]}  # an older berth saved the session alone
    sessions = saved.get("sessions") if isinstance(saved, dict) else None
    if not isinstance(sessions, list) or len(sessions) > len(files):
        state.unlink(missing_ok=True)
        return None, fresh
    for upload, session in zip(fresh, sessions, strict=False):
        if session is None:
            continue
        answer = _call(client, ["upload:status", str(session)])
        if not answer.ok:
            state.unlink(missing_ok=True)
            _abort(client, fresh)
            return None, [Upload(name, path) for name, path in files]
        upload.session = str(session)
        upload.missing = list(answer.data["missing"])
        upload.total_chunks = int(answer.data["total_chunks"])
        upload.chunk_size = int(answer.data["chunk_size"])
        upload.ended = bool(answer.data.get("ended"))
    group = saved.get("group")
    return (str(group) if group else None), fresh


def _save(state: Path, group: str | None, uploads: list[Upload]) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"group": group, "sessions": [upload.session for upload in uploads]}))


def _begin(
    client: Client,
    app: str,
    upload: Upload,
    group: str | None,
    index: int,
    count: int,
    executable: str | None,
    options: list[str],
    chunk_size: int,
) -> int:
    """`upload:begin` of one file; the chunk size it goes with (smaller when berthd says only that fits)."""
    size = upload.path.stat().st_size
    digest = _sha256(upload.path)
    runs = group is None or upload.name == executable
    extra = [*options] if runs else []
    if group is not None:
        extra = ["--group", group, "--file-index", str(index), "--total-files", str(count), *extra]
        if runs:
            extra = ["--executable", *extra]
    for _ in range(2):
        total = max(1, -(-size // chunk_size))
        words = ["upload:begin", app, upload.name, str(size), str(total), "--sha256", digest]
        answer = _call(client, [*words, "--chunk-size", str(chunk_size), *extra])
        fits = answer.data.get("max_chunk_size") if isinstance(answer.data, dict) else None
        if answer.ok or not isinstance(fits, int) or not 0 < fits < chunk_size:
            break
        chunk_size = fits  # berthd's --max-line is shorter than this chunk's line: as much as fits
    if not answer.ok:
        raise CommandFailed(answer)
    upload.session = str(answer.data["session_id"])
    upload.chunk_size = chunk_size
    upload.total_chunks = total
    upload.missing = list(range(total))
    return chunk_size


def _send_chunks(client: Client, upload: Upload, done: int, total: int, progress: Progress) -> int:
    """The chunks berthd misses, a few in flight (berthd stores one while the next is encoded and sent);
    every answer read before a refusal is raised, so the connection can be used again."""
    failed: Response | None = None
    in_flight: deque[int] = deque()  # the chunks sent and not answered yet, in order
    busy_in_a_row = 0

    with open(upload.path, "rb") as file:

        def send(index: int) -> None:
            file.seek(index * upload.chunk_size)
            last = index == upload.total_chunks - 1
            data = base64.b64encode(file.read() if last else file.read(upload.chunk_size)).decode()
            client.send(["upload:chunk", str(upload.session), str(index), data])
            in_flight.append(index)

        def settle() -> None:
            nonlocal done, failed, busy_in_a_row
            index = in_flight.popleft()
            answer = client.receive()
            if _over_the_bound(answer) and busy_in_a_row < MAX_BUSY_IN_A_ROW and failed is None:
                busy_in_a_row += 1
                send(index)  # read at this user's turn
                return
            if not answer.ok:
                failed = failed or answer
                return
            busy_in_a_row = 0
            done += 1
            progress(done, total)

        for index in upload.missing or []:
            if failed is not None:
                break
            send(index)
            if len(in_flight) >= IN_FLIGHT:
                settle()
        while in_flight:
            settle()
    if failed is not None:
        raise CommandFailed(failed)
    upload.missing = []
    return done


def _abort(client: Client, uploads: list[Upload]) -> None:
    """The sessions dropped, as far as berthd still has them (a failed end has dropped its own)."""
    for upload in uploads:
        if upload.session is not None:
            try:
                _call(client, ["upload:abort", upload.session])
            except (OSError, ConnectionError):
                return
