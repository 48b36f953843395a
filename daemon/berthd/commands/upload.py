"""upload:begin, upload:chunk, upload:status, upload:end, upload:abort: an executable sent in chunks.

Chunks land at their place in a sparse file under the data dir, in any order, a repeated chunk
rewriting the same bytes. The session lives in the store, so an upload survives a berthd restart and
goes on where it stopped. `upload:end` checks size and sha256, then moves the file into the app's
folder in one rename (mode 0755). Nothing is created for the app before that. Chunk data is never
logged. Unfinished sessions expire.

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
from pathlib import Path
from typing import Annotated

import msgspec
import trio

from berthd.access import enforce
from berthd.commands.apps import app_for_source, settings_for
from berthd.commands.sources import SourceOptions, apply_options, check_cwd_place, check_host_meets, go_live
from berthd.errors import CommandError, invalid_argument, not_found
from berthd.log import LOG
from berthd.server.context import Context, Services
from berthd.server.params import AppName, Params
from berthd.server.registry import REGISTRY, Result
from berthd.store.records import AppSource, UploadRecord

FILENAME = re.compile(r"^[A-Za-z0-9._+-]{1,255}$")
SESSION = re.compile(r"^up-[A-Za-z0-9_-]{16}$")
MAX_CHUNKS = 1_000_000
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
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


class BeginParams(SourceOptions, kw_only=True):
    app: AppName
    filename: str
    total_size: Annotated[int, msgspec.Meta(ge=1, description="a whole number of bytes, at least 1")]
    total_chunks: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNKS, description=f"from 1 to {MAX_CHUNKS}")]
    sha256: str | None = None
    positional = ("app", "filename", "total_size", "total_chunks")
    metavars = {**SourceOptions.metavars, "sha256": "HEX"}


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
    summary="start a chunked upload of an executable; data.session_id",
    mutating=True,
    creates_app=True,
    runs_code=True,
)
async def begin(ctx: Context, params: BeginParams) -> Result:
    check_filename(params.filename)
    if params.sha256 is not None and not SHA256.match(params.sha256):
        raise invalid_argument("invalid --sha256: 64 hexadecimal digits")
    if params.total_size > ctx.services.config.max_upload_bytes:
        raise invalid_argument(
            f"upload of {params.total_size} bytes is over the limit of {ctx.services.config.max_upload_bytes}"
        )
    if params.total_chunks > params.total_size:
        raise invalid_argument("more chunks than bytes")
    existing = await ctx.store.get_app(params.app)
    checked, _ = apply_options(settings_for(ctx, existing), params)  # refused now
    await check_cwd_place(ctx, params.app, checked, existing.source.detail if existing else {})
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
    upload = UploadRecord(
        session, params.app, params.filename, params.total_size, params.total_chunks,
        params.sha256.lower() if params.sha256 else None, bitmap, time.time(), options, ctx.peer.uid,
    )  # fmt: skip
    await ctx.store.create_upload(upload)  # the row first: the expiry sweep removes part files without one
    try:
        await trio.to_thread.run_sync(make_part)
    except OSError as exc:
        await ctx.store.delete_upload(session)
        raise CommandError("internal", f"cannot make room for the upload: {exc.strerror}") from None
    return Result(
        f"Upload {session} started: {params.total_chunks} chunks of {upload.chunk_size} bytes",
        {"session_id": session, "chunk_size": upload.chunk_size, "total_chunks": params.total_chunks},
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
    if total >= config.max_uploads or (uid != 0 and total >= config.max_uploads - 1):
        raise CommandError(
            "busy", f"{total} unfinished uploads, the most berthd takes at once: try again later"
        )
    free = await trio.to_thread.run_sync(_free_bytes, uploads_dir(ctx.services))
    if reserved + size > free:
        raise CommandError(
            "busy",
            f"not enough free disk for {size} more bytes: the unfinished uploads may take {reserved} bytes"
            f" and {free} are free; try again later",
        )


def _free_bytes(folder: Path) -> int:
    """Free bytes, for an unprivileged writer, on the disk the uploads go to (the data dir's if new)."""
    while not folder.exists():
        folder = folder.parent
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize


@REGISTRY.command("upload:chunk", summary="one chunk, base64; any order; repeats are harmless", mutating=True)
async def chunk(ctx: Context, params: ChunkParams) -> Result:
    upload = await load_session(ctx, params.session)
    if params.index >= upload.total_chunks:
        raise invalid_argument(
            f"chunk index {params.index} out of range: the upload has {upload.total_chunks} chunks"
        )
    try:
        data = base64.b64decode(params.data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("chunk data is not valid base64") from None
    expected = upload.chunk_length(params.index)
    if len(data) != expected:
        overrun = " (it would overrun the total size)" if len(data) > expected else ""
        raise invalid_argument(f"chunk {params.index} has {len(data)} bytes, expected {expected}{overrun}")
    path = part_file(ctx.services, upload.id)

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, data, params.index * upload.chunk_size)
        finally:
            os.close(fd)

    await trio.to_thread.run_sync(write)
    await ctx.store.mark_chunk(upload.id, params.index)
    return Result(f"chunk {params.index} stored", {"index": params.index, "bytes": len(data)})


@REGISTRY.command("upload:status", summary="received and missing chunk indexes", mutating=False)
async def status(ctx: Context, params: SessionParams) -> Result:
    upload = await load_session(ctx, params.session)
    received, missing = upload.received_indexes(), upload.missing_indexes()
    return Result(
        f"{len(received)} of {upload.total_chunks} chunks received",
        {
            "session_id": upload.id,
            "app": upload.app,
            "filename": upload.filename,
            "total_size": upload.total_size,
            "total_chunks": upload.total_chunks,
            "chunk_size": upload.chunk_size,
            "received": received,
            "missing": missing,
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
    for directory in (*made, folder):  # just target.parent when nothing was made
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@REGISTRY.command(
    "upload:end",
    summary="check size and sha256; the file becomes the app's executable",
    mutating=True,
    runs_code=True,
)
async def end(ctx: Context, params: SessionParams) -> Result:
    upload = await load_session(ctx, params.session)
    # what the upload deploys is known only now: judged as upload:begin's arguments would be, today
    await enforce.authorize(
        ctx, "upload:end", msgspec.json.decode(upload.options, type=BeginParams).touches()
    )
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
    options = msgspec.json.decode(upload.options, type=BeginParams)
    existing = await ctx.store.get_app(upload.app)
    settings, env = apply_options(settings_for(ctx, existing), options)
    try:
        await check_host_meets(ctx, upload.app, settings, "upload")
        await check_cwd_place(ctx, upload.app, settings, existing.source.detail if existing else {})
    except CommandError:
        await _drop(ctx.services, upload.id)
        raise
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
