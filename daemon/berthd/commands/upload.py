"""upload:begin, upload:chunk, upload:status, upload:end, upload:abort: an executable sent in chunks,
or an upload group of several files.

Chunks land at their place in a sparse file under the data dir, in any order, a repeated chunk
rewriting the same bytes. Every chunk has the same size but the last, which holds the rest: the size
the client gives (`--chunk-size`, the seed's `chunk_size`), or else the one its first chunk shows (kept
in the store from then on). The session lives in the store, so an upload survives a berthd restart and
goes on where it stopped. `upload:end` checks size and sha256, then moves the file into the app's
folder in one rename (mode 0755). Nothing is created for the app before that. Chunk data is never
logged. Unfinished sessions expire.

A group (the seed's `upload_group_id`, `file_index`, `total_files`) is one session a file, each placed
by a path relative to the release; `upload:end` of each checks it and keeps it waiting, and the end of
the last one makes a fresh release of them all (descriptor-based placement: `Extractor.link_in`) and
moves `current` to it, so no file of a group is visible before all of them are.

Chunks are written without a sync (one per chunk would add a disk flush to every chunk); `upload:end`
syncs the file once before checking it and syncs the folder after the rename. So after a power loss
`upload:status` can count a chunk whose data did not reach the disk: the sha256 at the end refuses the
file rather than installing a torn one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import msgspec
import trio

from berth.framing import largest_chunk
from berthd.access import enforce
from berthd.commands.apps import app_for_source, settings_for
from berthd.commands.sources import SourceOptions, apply_options, check_cwd_place, check_host_meets, go_live
from berthd.errors import CommandError, conflict, invalid_argument, not_found
from berthd.log import LOG
from berthd.server.context import Context, Services
from berthd.server.params import AppName, Params
from berthd.server.registry import REGISTRY, Result
from berthd.sources import releases
from berthd.sources.extract import ArchiveError, Extractor, entry_parts
from berthd.store import modes
from berthd.store.records import AppSettings, AppSource, UploadRecord

FILENAME = re.compile(r"^[A-Za-z0-9._+-]{1,255}\Z")
SESSION = re.compile(r"^up-[A-Za-z0-9_-]{16}\Z")
MAX_CHUNKS = 1_000_000
SHA256 = re.compile(r"^[0-9a-fA-F]{64}\Z")
GROUP = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
MAX_GROUP_FILES = 10_000
READ_BLOCK = 1024 * 1024


def uploads_dir(services: Services) -> Path:
    return services.data_dir / "uploads"


def part_file(services: Services, session: str) -> Path:
    return uploads_dir(services) / f"{session}.part"


def check_filename(name: str) -> str:
    if name in (".", "..") or not FILENAME.match(name):
        raise invalid_argument(
            f"invalid filename {name!r}: a plain file name (letters, digits, . _ + -), no '/' and not '..'"
        )
    return name


def check_file_path(path: str) -> str:
    """A group's file path: relative, inside the app's folder; as the release will hold it."""
    if "\x00" in path:
        raise invalid_argument("invalid file path: it contains a NUL byte")
    try:
        parts = entry_parts(path, "file path", "the app's folder")
    except ArchiveError as exc:
        raise invalid_argument(f"invalid {exc}") from None
    if not parts:
        raise invalid_argument(f"invalid file path {path!r}: it names no file")
    return "/".join(parts)


class BeginParams(SourceOptions, kw_only=True):
    app: AppName
    filename: str
    total_size: Annotated[int, msgspec.Meta(ge=1, description="a whole number of bytes, at least 1")]
    total_chunks: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNKS, description=f"from 1 to {MAX_CHUNKS}")]
    sha256: str | None = None
    chunk_size: Annotated[int, msgspec.Meta(ge=1, description="bytes, at least 1")] | None = None
    group: str | None = None
    file_index: Annotated[int, msgspec.Meta(ge=0, description="a file index from 0")] | None = None
    total_files: (
        Annotated[int, msgspec.Meta(ge=1, le=MAX_GROUP_FILES, description=f"from 1 to {MAX_GROUP_FILES}")]
        | None
    ) = None
    executable: bool = False
    positional = ("app", "filename", "total_size", "total_chunks")
    metavars = {**SourceOptions.metavars, "sha256": "HEX", "chunk_size": "N", "group": "G",
                "file_index": "I", "total_files": "N"}  # fmt: skip

    @property
    def source_options(self) -> SourceOptions:
        return SourceOptions(**{name: getattr(self, name) for name in SourceOptions.__struct_fields__})


class ChunkParams(Params):
    session: str
    index: Annotated[int, msgspec.Meta(ge=0, description="a chunk index from 0")]
    data: str
    positional = ("session", "index", "data")
    secret = frozenset({"data"})
    metavars = {"data": "BASE64"}


class SessionParams(Params):
    session: str
    positional = ("session",)


async def load_session(ctx: Context, session: str) -> UploadRecord:
    upload = await ctx.store.get_upload(session) if SESSION.match(session) else None
    caller = ctx.caller
    if (
        upload is not None
        and not caller.unlimited
        and (upload.uid != ctx.peer.uid or not caller.may_see(upload.app))
    ):
        upload = None  # under the access rules, another caller's upload is as if there were none
    if upload is None:
        raise not_found(f"no upload session {session!r} (finished, aborted or expired?)")
    return upload


@REGISTRY.command(
    "upload:begin",
    summary="start a chunked upload of an executable, or of one file of a group; data.session_id",
    mutating=True,
    creates_app=True,
    runs_code=True,
)
async def begin(ctx: Context, params: BeginParams) -> Result:
    grouped = _check_group_fields(params)
    filename = check_file_path(params.filename) if grouped else check_filename(params.filename)
    if params.sha256 is not None and not SHA256.match(params.sha256):
        raise invalid_argument("invalid --sha256: 64 hexadecimal digits")
    if params.total_size > ctx.services.config.max_upload_bytes:
        raise invalid_argument(
            f"upload of {params.total_size} bytes is over the limit of {ctx.services.config.max_upload_bytes}"
        )
    if params.total_chunks > params.total_size:
        raise invalid_argument("more chunks than bytes")
    _check_chunk_size(ctx, params)
    existing = await ctx.store.get_app(params.app)
    checked, _ = apply_options(settings_for(ctx, existing), params)  # refused now
    await check_cwd_place(ctx, params.app, checked, existing.source.detail if existing else {})
    if grouped:
        await _check_group(ctx, params, filename)
    await _check_room(ctx, params.app, params.total_size)
    options = msgspec.json.encode(params)
    session = f"up-{secrets.token_urlsafe(12)}"
    folder = uploads_dir(ctx.services)

    def make_part() -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(
            part_file(ctx.services, session), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        try:
            os.ftruncate(fd, params.total_size)
        finally:
            os.close(fd)

    bitmap = bytes(-(-params.total_chunks // 8))
    chunk_size = params.total_size if params.total_chunks == 1 else params.chunk_size
    upload = UploadRecord(
        session, params.app, filename, params.total_size, params.total_chunks,
        params.sha256.lower() if params.sha256 else None, bitmap, time.time(), options, ctx.peer.uid,
        chunk_size, params.group, params.file_index, params.total_files, grouped and params.executable,
    )  # fmt: skip
    await ctx.store.create_upload(upload)  # the row first: the expiry sweep removes part files without one
    try:
        await trio.to_thread.run_sync(make_part)
    except OSError as exc:
        await ctx.store.delete_upload(session)
        raise CommandError("internal", f"cannot make room for the upload: {exc.strerror}") from None
    shown = _shown_chunk_size(upload)
    sizes = f"chunks of {shown} bytes" if upload.chunk_size else "chunks of a size its first chunk will show"
    of_group = (
        f" (file {params.file_index} of {params.total_files} of group {params.group})" if grouped else ""
    )
    return Result(
        f"Upload {session} started{of_group}: {params.total_chunks} {sizes}",
        {
            "session_id": session,
            "chunk_size": shown,
            "chunk_size_fixed": upload.chunk_size is not None,
            "total_chunks": params.total_chunks,
        },
    )


def _shown_chunk_size(upload: UploadRecord) -> int:
    """The chunk size in force; while it is to be learnt, the one an even split gives (what a client
    with no preference may use)."""
    return upload.chunk_size or -(-upload.total_size // upload.total_chunks)


def _check_chunk_size(ctx: Context, params: BeginParams) -> None:
    """A chunk size that makes sense for the size and count, and chunks whose lines fit in --max-line
    (refused with `data.max_chunk_size`, the most that fits, so that a client can begin again with it)."""
    size, count, given = params.total_size, params.total_chunks, params.chunk_size
    if given is not None and count > 1 and (count - 1) * given >= size:
        raise invalid_argument(
            f"invalid --chunk-size {given}: {count - 1} chunks of {given} bytes leave nothing for the last"
            f" (the upload has {size} bytes in {count} chunks)"
        )
    if count == 1:
        longest = size
    elif given is None:
        longest = -(-size // count)  # whatever size its chunks have, one is at least this long
    else:
        longest = max(given, size - (count - 1) * given)
    max_line = ctx.services.config.max_line
    fits = largest_chunk(max_line)
    if longest > fits:
        raise CommandError(
            "invalid_argument",
            f"{size} bytes in {count} chunks makes a chunk of {longest} bytes, whose upload:chunk line would"
            f" be longer than berthd's --max-line of {max_line} bytes: at most {fits} bytes a chunk",
            {"max_chunk_size": fits},
        )


def _check_group_fields(params: BeginParams) -> bool:
    """Whether this file is one of a group: --group, --file-index and --total-files all, or none."""
    fields = (params.group, params.file_index, params.total_files)
    if all(value is None for value in fields):
        return False
    if any(value is None for value in fields):
        raise invalid_argument(
            "a file of an upload group takes --group G, --file-index I and --total-files N"
        )
    assert params.group is not None and params.file_index is not None and params.total_files is not None
    if not GROUP.match(params.group):
        raise invalid_argument(f"invalid --group {params.group!r}: 1 to 128 letters, digits and . _ : -")
    if params.file_index >= params.total_files:
        raise invalid_argument(
            f"invalid --file-index {params.file_index}: a group of {params.total_files} files counts them"
            f" from 0 to {params.total_files - 1}"
        )
    if not params.executable and params.source_options != SourceOptions():
        raise invalid_argument(
            "the source options (--cwd, --env, --user, -- ARG ...) of a group go with its --executable file"
        )
    return True


async def _check_group(ctx: Context, params: BeginParams, path: str) -> None:
    """The file fits its group: the same number of files, its own index and place, one executable; and
    the group can be held whole within the upload limits."""
    assert params.group is not None and params.total_files is not None
    group, total, config = params.group, params.total_files, ctx.services.config
    limit = config.max_uploads_per_app
    if ctx.peer.uid != 0:
        limit = min(limit, config.per_uid_uploads)
    if total > limit:
        raise CommandError(
            "busy",
            f"a group of {total} files takes {total} upload sessions at once; at most {limit} may be open"
            " (--max-uploads-per-app, --max-uploads-per-uid)",
        )
    members = await ctx.store.group_uploads(params.app, group, ctx.peer.uid)
    parts = tuple(path.split("/"))
    for member in members:
        if member.total_files != total:
            raise invalid_argument(f"group {group} has --total-files {member.total_files}, not {total}")
        if member.file_index == params.file_index:
            raise conflict(f"file index {params.file_index} of group {group} is begun already ({member.id})")
        other = tuple(member.filename.split("/"))
        if other[: len(parts)] == parts or parts[: len(other)] == other:
            raise conflict(
                f"file path {path} of group {group} clashes with {member.filename}"
                f" (file index {member.file_index})"
            )
        if params.executable and member.executable:
            raise invalid_argument(
                f"group {group} has its executable already ({member.filename}): a group has exactly one"
                " --executable file"
            )
    if len(members) + 1 == total and not params.executable and not any(m.executable for m in members):
        raise invalid_argument(
            f"none of the {total} files of group {group} is --executable: exactly one must be"
        )


async def _check_room(ctx: Context, app: str, size: int) -> None:
    """Each session may reserve up to --max-upload-bytes: their number is bounded per app, per uid (root
    aside) and in all, with the last slot kept for root; and all of them together must fit on the disk
    once complete. (upload:begin holds the command lock, so the counts and the new row cannot race.)"""
    config = ctx.services.config
    uid = ctx.peer.uid
    of_app, of_uid, total, reserved = await ctx.store.count_uploads(app, uid)
    if of_app >= config.max_uploads_per_app:
        raise CommandError(
            "busy",
            f"{app} has {of_app} unfinished uploads, the most it may have: end or abort one"
            " (upload:end, upload:abort), or let it expire",
        )
    if uid != 0 and of_uid >= config.per_uid_uploads:
        raise CommandError(
            "busy",
            f"you (uid {uid}) have {of_uid} unfinished uploads, the most one user may have: end or abort"
            " one (upload:end, upload:abort), or let it expire",
        )
    # other users' uploads are theirs: root is told the figures, anyone else only that there is no room
    if total >= config.max_uploads or (uid != 0 and total >= config.max_uploads - 1):
        counted = f"{total} unfinished uploads, the most" if uid == 0 else "as many unfinished uploads as"
        raise CommandError("busy", f"{counted} berthd takes at once: try again later")
    free = await trio.to_thread.run_sync(_free_bytes, uploads_dir(ctx.services))
    if reserved + size > free:
        figures = (
            f": the unfinished uploads may take {reserved} bytes and {free} are free" if uid == 0 else ""
        )
        raise CommandError("busy", f"not enough free disk for {size} more bytes{figures}; try again later")


def _free_bytes(folder: Path) -> int:
    """Free bytes, for an unprivileged writer, on the disk the uploads go to (the data dir's if new)."""
    while not folder.exists():
        folder = folder.parent
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize


@REGISTRY.command("upload:chunk", summary="one chunk, base64; any order; repeats are harmless", mutating=True)
async def chunk(ctx: Context, params: ChunkParams) -> Result:
    upload = await load_session(ctx, params.session)
    if upload.ended_hash is not None:  # checked already: its bytes may change no more
        raise conflict(f"upload {upload.id} has ended, and waits for the rest of group {upload.group}")
    if params.index >= upload.total_chunks:
        raise invalid_argument(
            f"chunk index {params.index} out of range: the upload has {upload.total_chunks} chunks"
        )
    try:
        data = base64.b64decode(params.data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("chunk data is not valid base64") from None
    chunk_size = upload.chunk_size or _learn_chunk_size(upload, params.index, len(data))
    expected = upload.chunk_length(params.index) if upload.chunk_size else len(data)
    if len(data) != expected:
        last = " (the last chunk holds the rest)" if params.index == upload.last_index else ""
        raise invalid_argument(f"chunk {params.index} has {len(data)} bytes, expected {expected}{last}")
    path = part_file(ctx.services, upload.id)

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, data, params.index * chunk_size)
        finally:
            os.close(fd)

    await trio.to_thread.run_sync(write)
    await ctx.store.mark_chunk(upload.id, params.index, chunk_size)
    ctx.services.metrics.upload_bytes += len(data)
    return Result(f"chunk {params.index} stored", {"index": params.index, "bytes": len(data)})


def _learn_chunk_size(upload: UploadRecord, index: int, length: int) -> int:
    """The chunk size the first chunk of an upload begun without --chunk-size shows: its length, or for
    the last chunk what the others must each hold of the rest."""
    size, last = upload.total_size, upload.last_index
    if index < last:
        if last * length >= size:
            raise invalid_argument(
                f"chunk {index} has {length} bytes: {last} chunks of {length} bytes leave nothing for the"
                f" last (the upload has {size} bytes in {upload.total_chunks} chunks)"
            )
        return length
    rest = size - length
    if length < 1 or rest < last or rest % last:
        raise invalid_argument(
            f"chunk {index} has {length} bytes: the other {last} chunks cannot hold the remaining {rest}"
            " bytes in chunks of one size"
        )
    return rest // last


@REGISTRY.command("upload:status", summary="received and missing chunk indexes", mutating=False)
async def status(ctx: Context, params: SessionParams) -> Result:
    upload = await load_session(ctx, params.session)
    received, missing = upload.received_indexes(), upload.missing_indexes()
    ended = " (ended: waiting for its group)" if upload.ended_hash else ""
    return Result(
        f"{len(received)} of {upload.total_chunks} chunks received{ended}",
        {
            "session_id": upload.id,
            "app": upload.app,
            "filename": upload.filename,
            "total_size": upload.total_size,
            "total_chunks": upload.total_chunks,
            "chunk_size": _shown_chunk_size(upload),
            "chunk_size_fixed": upload.chunk_size is not None,
            "received": received,
            "missing": missing,
            "group": upload.group,
            "file_index": upload.file_index,
            "total_files": upload.total_files,
            "executable": upload.executable,
            "ended": upload.ended_hash is not None,
        },
    )


def _settle(path: Path) -> tuple[int, str]:
    """The part file's data made durable (once, here: chunks are written unsynced), then its size and
    sha256, so what is checked is what survives a power loss."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        os.fdatasync(file.fileno())
        size = os.fstat(file.fileno()).st_size
        while block := file.read(READ_BLOCK):
            digest.update(block)
    return size, digest.hexdigest()


def _install(part: Path, target: Path) -> None:
    """The part file becomes `target` (mode 0755) in one rename, made durable: the target's folder is
    fsynced, and the parent of every folder made for it."""
    folder, made = target.parent, []
    while not folder.exists():
        made.append(folder)
        folder = folder.parent
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(part, 0o755)
    os.replace(part, target)
    _sync_folders((*made, folder))  # just target.parent when nothing was made


def _sync_folders(folders: Iterable[Path]) -> None:
    for directory in folders:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def _checked(ctx: Context, upload: UploadRecord) -> tuple[int, str]:
    """The upload complete, its size and sha256 right (else the session and its data are dropped)."""
    missing = upload.missing_indexes()
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise invalid_argument(f"upload is incomplete: {len(missing)} chunks missing ({shown})")
    part = part_file(ctx.services, upload.id)
    size, digest = await trio.to_thread.run_sync(_settle, part)
    if size != upload.total_size or (upload.sha256 and digest != upload.sha256):
        await _drop(ctx.services, upload.id)
        what = (
            f"size {size} != {upload.total_size}"
            if size != upload.total_size
            else f"sha256 {digest} != {upload.sha256}"
        )
        raise invalid_argument(f"upload rejected, {what}; the session and its data were removed")
    return size, digest


async def _settings_at_end(
    ctx: Context, upload: UploadRecord, dropped: list[str]
) -> tuple[AppSettings, dict[str, str]]:
    """The source options given at upload:begin applied to the app's settings as they are now, and
    checked again; when they are refused, the sessions `dropped` go with their data."""
    options = msgspec.json.decode(upload.options, type=BeginParams)
    existing = await ctx.store.get_app(upload.app)
    settings, env = apply_options(settings_for(ctx, existing), options)
    try:
        await check_host_meets(ctx, upload.app, settings, "upload")
        await check_cwd_place(ctx, upload.app, settings, existing.source.detail if existing else {})
    except CommandError:
        for session in dropped:
            await _drop(ctx.services, session)
        raise
    return settings, env


@REGISTRY.command(
    "upload:end",
    summary="check size and sha256; the file becomes the app's executable (a group's last: all its files)",
    mutating=True,
    runs_code=True,
)
async def end(ctx: Context, params: SessionParams) -> Result:
    upload = await load_session(ctx, params.session)
    # what the upload deploys is known only now: judged as upload:begin's arguments would be, today
    await enforce.authorize(
        ctx, "upload:end", msgspec.json.decode(upload.options, type=BeginParams).touches()
    )
    if upload.group is not None:
        return await _end_group_file(ctx, upload)
    size, digest = await _checked(ctx, upload)
    settings, env = await _settings_at_end(ctx, upload, [upload.id])
    part = part_file(ctx.services, upload.id)
    record, created = await app_for_source(ctx, upload.app)
    app_dir = ctx.services.app_dir(upload.app)
    target = app_dir / "bin" / upload.filename
    try:
        await trio.to_thread.run_sync(_install, part, target)
    except OSError as exc:
        if created:
            await ctx.store.delete_app(upload.app)
        raise CommandError("internal", f"cannot install the upload: {exc.strerror}") from None
    settings = msgspec.structs.replace(settings, executable=str(target))
    source = AppSource("upload", {"filename": upload.filename, "upload_hash": digest, "size": str(size)})
    await ctx.store.delete_upload(upload.id)
    await go_live(ctx, upload.app, source, settings, env, start=False)
    return Result(
        f"Upload of {upload.filename} to {upload.app} done ({size} bytes, sha256 {digest})",
        {"app": upload.app, "executable": str(target), "upload_hash": digest, "size": size},
    )


# upload groups


async def _end_group_file(ctx: Context, upload: UploadRecord) -> Result:
    """One file of a group checked and kept; the last one's end makes the group's release."""
    assert upload.group is not None
    if upload.ended_hash is None:
        _, digest = await _checked(ctx, upload)
        await ctx.store.mark_upload_ended(upload.id, digest)
    members = await ctx.store.group_uploads(upload.app, upload.group, upload.uid)
    if _waiting_for(upload, members):
        return _waiting_answer(upload, members)
    # one deploy of an app at a time: its source lock is taken first, then the command lock again
    # (a deploy holding the source lock waits for the command lock to go live)
    ctx.release_lock()
    app_dir = ctx.services.app_dir(upload.app)
    async with ctx.services.source_lock(upload.app):
        async with ctx.services.lock.held():
            members = await ctx.store.group_uploads(upload.app, upload.group, upload.uid)
            if not any(member.id == upload.id for member in members):
                raise not_found(f"no upload session {upload.id!r} (finished, aborted or expired?)")
            if _waiting_for(upload, members):  # one was aborted or expired meanwhile
                return _waiting_answer(upload, members)
            result = await _release_group(ctx, members)
        parts = [part_file(ctx.services, member.id) for member in members]
        await trio.to_thread.run_sync(_unlink_all, parts)  # the release holds links to them
        await trio.to_thread.run_sync(releases.prune, app_dir)
    return result


def _waiting_for(upload: UploadRecord, members: list[UploadRecord]) -> list[int]:
    ended = {member.file_index for member in members if member.ended_hash is not None}
    return [index for index in range(upload.total_files or 0) if index not in ended]


def _waiting_answer(upload: UploadRecord, members: list[UploadRecord]) -> Result:
    waiting = _waiting_for(upload, members)
    return Result(
        f"File {upload.file_index} of group {upload.group} ({upload.filename}) is complete: the group waits"
        f" for {len(waiting)} more of its {upload.total_files} files (file indexes"
        f" {', '.join(map(str, waiting[:20]))}{' ...' if len(waiting) > 20 else ''})",
        {
            "complete": False,
            "app": upload.app,
            "group": upload.group,
            "file_index": upload.file_index,
            "waiting_for": waiting,
        },
    )


async def _release_group(ctx: Context, members: list[UploadRecord]) -> Result:
    """Every file of the group into a fresh release that becomes `current`; the app's executable is the
    group's --executable file, its working directory the release (under the command lock)."""
    first = members[0]
    app, group = first.app, first.group
    executable = next(member for member in members if member.executable)  # upload:begin saw to it
    settings, env = await _settings_at_end(ctx, executable, [member.id for member in members])
    _, created = await app_for_source(ctx, app)
    app_dir = ctx.services.app_dir(app)
    files = [(member.filename, member.executable, part_file(ctx.services, member.id)) for member in members]
    size = sum(member.total_size for member in members)
    gid = modes.app_group(settings.user)
    try:
        release = await trio.to_thread.run_sync(_assemble, app_dir, files, size, gid)
        await trio.to_thread.run_sync(releases.activate, app_dir, release)
    except (OSError, ArchiveError) as exc:
        if created:
            await ctx.store.delete_app(app)
        raise CommandError("internal", f"cannot place the files of group {group}: {exc}") from None
    live = app_dir / "current"
    settings = msgspec.structs.replace(settings, executable=str(live / executable.filename))
    paths = [member.filename for member in members]
    detail = {
        "filename": executable.filename,
        "upload_hash": executable.ended_hash or "",
        "size": str(size),
        "group": group or "",
        "files": msgspec.json.encode(paths).decode(),
        "source_dir": str(live),
        "release": release.name,
    }
    await ctx.store.delete_upload(*(member.id for member in members))
    await go_live(ctx, app, AppSource("upload", detail), settings, env, start=False)
    return Result(
        f"Upload group {group} of {app} done: {len(paths)} files ({size} bytes), {executable.filename} runs",
        {
            "complete": True,
            "app": app,
            "group": group,
            "files": paths,
            "executable": settings.executable,
            "upload_hash": executable.ended_hash,
            "size": size,
            "release": release.name,
        },
    )


def _assemble(app_dir: Path, files: list[tuple[str, bool, Path]], size: int, gid: int) -> Path:
    """A fresh release holding each part file (hard-linked: the part stays until the store forgets its
    session) at its path, 0755 for the executable, 0644 the others; folders 0755, the release itself
    open to the app's group. Removed again when anything fails."""
    release = releases.new_release(app_dir, "upload")
    try:
        with Extractor(release, size, len(files)) as extractor:
            for path, executable, part in files:
                extractor.link_in(path, executable, part)
        modes.open_path(app_dir, releases.releases_dir(app_dir), gid)
        modes.open_folder(release, gid)
        _sync_folders(
            {releases.releases_dir(app_dir), release, *((release / path).parent for path, _, _ in files)}
        )
    except BaseException:
        releases.discard(release)
        raise
    return release


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


@REGISTRY.command("upload:abort", summary="drop an upload and its data", mutating=True)
async def abort(ctx: Context, params: SessionParams) -> Result:
    upload = await load_session(ctx, params.session)
    await _drop(ctx.services, upload.id)
    return Result(f"Upload {upload.id} aborted")


async def _drop(services: Services, session: str) -> None:
    await services.store.delete_upload(session)
    await trio.to_thread.run_sync(lambda: part_file(services, session).unlink(missing_ok=True))


def _sweep_parts(folder: Path, known: set[str]) -> None:
    if folder.exists():
        for part in folder.glob("*.part"):
            if part.stem not in known:
                part.unlink(missing_ok=True)


async def expire_uploads(services: Services, interval: float = 60.0) -> None:
    """Forever: drop sessions older than the TTL, and part files no session owns."""
    while True:
        # under the command lock, as upload:begin and upload:chunk are: a session begun between reading
        # the known ids and sweeping would otherwise lose its part file
        async with services.lock.held():
            cutoff = time.time() - services.config.upload_ttl
            for session in await services.store.uploads_older_than(cutoff):
                LOG.info("upload %s expired", session)
                await _drop(services, session)
            known = set(await services.store.all_upload_ids())
            await trio.to_thread.run_sync(_sweep_parts, uploads_dir(services), known)
        await trio.sleep(min(interval, services.config.upload_ttl))
