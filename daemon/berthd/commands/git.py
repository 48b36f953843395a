"""git:sync and git:from-archive: code from a git repository (built) or a source archive (with a Procfile).

Both go through the deploy pipeline of `berthd.commands.sources`: a fresh release folder, `current`
switched to it only when everything worked. An archive deploy starts the app (smartmob's agent runs what
it is given); a git sync replaces the processes only of an app that runs.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import msgspec
import trio

from berth.messages import ProgressEvent
from berthd.apps.launch import environment, resolve_identity
from berthd.commands.sources import (
    DeployFailed,
    SourceOptions,
    apply_options,
    begin_deploy,
    deploy_release,
    record_status,
)
from berthd.errors import invalid_argument
from berthd.runners import ProcessSpec
from berthd.server.context import Context
from berthd.server.params import AppName, about
from berthd.server.redaction import without_credentials
from berthd.server.registry import REGISTRY, Result
from berthd.sources import archive
from berthd.sources import git as gitsrc
from berthd.sources.caller import Caller, NotReadable, open_file, upload_pack
from berthd.sources.procfile import ProcessType, ProcfileError, parse_procfile
from berthd.store import modes
from berthd.store.records import AppRecord, AppSettings
from berthd.supervision.jobs import execute

DEFAULT_BUILD_TIMEOUT = 300
MAX_ENTRIES = 100_000
REF = re.compile(r"^[A-Za-z0-9._/@{}^~+-]{1,255}\Z")


# archives


class FromArchiveParams(SourceOptions, kw_only=True):
    app: AppName
    url: Annotated[str, about("a .tar.gz, .tgz, .tar or .zip over http, https or file")]
    positional = ("app", "url")


@REGISTRY.command(
    "git:from-archive",
    summary="deploy a .tar.gz/.tgz/.tar/.zip with a Procfile (http, https, file)",
    mutating=True,
    streaming=True,
    creates_app=True,
    runs_code=True,
)
async def from_archive(ctx: Context, params: FromArchiveParams) -> Result:
    try:
        parts = archive.check_url(params.url)
        shown = without_credentials(params.url)
        opened = None
        if parts.scheme == "file":  # opened now, as the caller: what the download reads
            path, caller = archive.local_path(parts), Caller.of(ctx.peer)
            opened = await ctx.services.deploy_work(ctx.peer.uid, open_file, caller, path, shown)
    except (archive.ArchiveError, NotReadable) as exc:
        raise invalid_argument(str(exc)) from None
    try:
        return await _deploy_archive(ctx, params, opened)
    finally:
        if opened is not None:
            os.close(opened)


async def _deploy_archive(ctx: Context, params: FromArchiveParams, opened: int | None) -> Result:
    begun = await begin_deploy(ctx, params.app, params, "archive")
    settings = begun.settings
    app = params.app
    app_dir = ctx.services.app_dir(app)
    types: dict[str, ProcessType] = {}

    async def build(release: Path) -> tuple[dict[str, str], AppSettings]:
        incoming = app_dir / f".incoming-{secrets.token_hex(4)}"
        try:
            types.update(await _download_and_unpack(ctx, app, params.url, opened, incoming, release))
        finally:
            incoming.unlink(missing_ok=True)
        await _check_scale(ctx, app, set(types))
        root = await trio.to_thread.run_sync(archive.source_root, release)
        detail = {
            "url": without_credentials(params.url),
            "procfile": msgspec.json.encode(types).decode(),
            "source_dir": str(app_dir / "current" / root.relative_to(release)),
        }
        return detail, settings

    await deploy_release(ctx, app, "archive", begun, build, start=True)
    rows = ctx.processes.report(app)
    listed = ", ".join(f"{name}: {entry.command}" for name, entry in types.items())
    return Result(
        f"Deploying {app} from {without_credentials(params.url)}... done\nProcess types: {listed}",
        {"types": list(types), "processes": rows},
    )


async def _download_and_unpack(
    ctx: Context, app: str, url: str, opened: int | None, incoming: Path, release: Path
) -> dict[str, ProcessType]:
    await record_status(ctx, app, "downloading")
    await ctx.emit(ProgressEvent("downloading", 0, None))
    last = [0.0]
    progress_events: list[tuple[int, int | None]] = []

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5:
            last[0] = now
            progress_events.append((done, total))

    config, stop = ctx.services.config, archive.Stop()
    try:
        # the worker thread cannot be interrupted: abandoned when the deploy is cancelled, it sees `stop`
        with trio.move_on_after(config.download_timeout + 1) as waited:
            size = await ctx.services.deploy_work(
                ctx.peer.uid, archive.download, url, opened, incoming, config.max_archive_bytes,
                config.download_timeout, stop, progress, abandon_on_cancel=True,
            )  # fmt: skip
        if waited.cancelled_caught:
            raise archive.Deadline(config.download_timeout).error()
    except archive.ArchiveError as exc:
        raise DeployFailed("download failure", str(exc)) from None
    finally:
        stop.set()
    for done, total in progress_events:
        await ctx.emit(ProgressEvent("downloading", done, total))
    if not progress_events or progress_events[-1][0] != size:
        await ctx.emit(ProgressEvent("downloading", size, size))
    await record_status(ctx, app, "unpacking")
    await ctx.emit(ProgressEvent("unpacking"))
    try:
        unpacked_limit = ctx.services.config.max_unpacked_bytes
        await ctx.services.deploy_work(
            ctx.peer.uid, archive.unpack, incoming, release, unpacked_limit, MAX_ENTRIES
        )
    except archive.ArchiveError as exc:
        raise DeployFailed("unpack failure", str(exc)) from None
    root = await trio.to_thread.run_sync(archive.source_root, release)
    return await _read_procfile(root, required=True)


async def _read_procfile(root: Path, *, required: bool) -> dict[str, ProcessType]:
    """The process types of the Procfile at `root` (none when there is none and none is required)."""
    procfile = root / "Procfile"
    if not procfile.is_symlink() and not procfile.exists():
        if required:
            raise DeployFailed("no procfile", "no Procfile at the root of the archive")
        return {}
    try:
        return dict(await trio.to_thread.run_sync(parse_procfile, procfile))
    except ProcfileError as exc:
        raise DeployFailed("invalid procfile", str(exc)) from None


async def _check_scale(ctx: Context, app: str, types: set[str]) -> None:
    _, scale = await ctx.store.get_runtime(app)
    unknown = sorted(kind for kind, count in scale.items() if count > 0 and kind not in types)
    if unknown:
        raise DeployFailed(
            "unknown process type",
            f"unknown process type {unknown[0]!r}: the app is scaled to it but the new Procfile has none",
        )


# git


class SyncParams(SourceOptions, kw_only=True):
    app: AppName
    repository: Annotated[str, about("a URL (https, ssh, git, file) or an absolute path")]
    ref: Annotated[str | None, about("a branch, tag or commit (default: the default branch)")] = None
    build_cmd: Annotated[str | None, about("a build, run with /bin/sh -c in the checkout")] = None
    executable: Annotated[str | None, about("what runs, relative to the checkout (else the Procfile)")] = None
    username: Annotated[str | None, about("the user name for the repository")] = None
    password: Annotated[str | None, about("its password or token (never kept)")] = None
    build_timeout: Annotated[
        int, msgspec.Meta(ge=1, le=86400, description="seconds the build may take, 1 to 86400")
    ] = DEFAULT_BUILD_TIMEOUT
    positional = ("app", "repository", "ref")
    secret = SourceOptions.secret | {"password"}
    metavars = {
        **SourceOptions.metavars,
        "build_cmd": "CMD",
        "executable": "PATH",
        "username": "U",
        "password": "P",
        "build_timeout": "SECONDS",
    }


@REGISTRY.command(
    "git:sync",
    summary="clone or update a git repository, check out REF, build, use PATH as the executable",
    mutating=True,
    streaming=True,
    creates_app=True,
    runs_code=True,
)
async def sync(ctx: Context, params: SyncParams) -> Result:
    try:
        repository = gitsrc.check_repository(params.repository, params.username, params.password)
        if repository.url.startswith("file:"):  # read by git upload-pack with the caller's rights
            reader = upload_pack(Caller.of(ctx.peer))
            repository = replace(repository, upload_pack=reader)
    except (gitsrc.GitError, NotReadable) as exc:
        raise invalid_argument(str(exc)) from None
    if params.ref is not None and (
        not REF.match(params.ref) or params.ref.startswith("-") or ".." in params.ref
    ):
        raise invalid_argument(f"invalid ref {params.ref!r}")
    if params.executable is not None and (params.executable.startswith("/") or "\x00" in params.executable):
        raise invalid_argument(
            f"invalid executable {params.executable!r}: give a path relative to the checkout"
        )

    async def checkout(release: Path) -> tuple[str, str]:
        return await _fetch_and_checkout(ctx, params.app, repository, params.ref, release)

    return await _deploy_git(ctx, params, repository.shown, checkout, "Syncing")


Checkout = Callable[[Path], Awaitable[tuple[str, str]]]
"""Puts the code in a release folder; returns its commit and what the ref was (branch, tag, commit)."""


async def _deploy_git(ctx: Context, params: SyncParams, shown: str, checkout: Checkout, verb: str) -> Result:
    """A git deploy through the pipeline: the code checked out, built, made live."""
    begun = await begin_deploy(ctx, params.app, params, "git")
    record, settings = begun.record, begun.settings
    app = params.app
    app_dir = ctx.services.app_dir(app)

    types: dict[str, ProcessType] = {}

    async def build(release: Path) -> tuple[dict[str, str], AppSettings]:
        commit, kind = await checkout(release)
        executable = await _build(ctx, record, params, release)
        detail = {
            "repository": shown,
            "ref": params.ref or "",
            "ref_kind": kind,
            "commit": commit,
            "source_dir": str(app_dir / "current"),
        }
        if params.build_cmd:
            detail["build_cmd"] = params.build_cmd
        if executable is None:
            if settings.executable is None:
                # no executable, now or from an earlier sync: the Procfile says what runs, as an archive's
                types.update(await _read_procfile(release, required=False))
            if types:
                await _check_scale(ctx, app, set(types))
                detail["procfile"] = msgspec.json.encode(types).decode()
            return detail, settings
        live = app_dir / "current" / executable.relative_to(release.resolve())
        return detail, msgspec.structs.replace(settings, executable=str(live))

    detail, live_settings = await deploy_release(ctx, app, "git", begun, build, start=False)
    commit, kind = detail["commit"], detail["ref_kind"]
    live_executable = live_settings.executable
    lines = [
        f"{verb} {app} from {shown} ({kind} {params.ref or ''}) at {commit[:12]}... done".replace(" )", ")")
    ]
    if types:
        lines.append(
            "Process types: " + ", ".join(f"{name}: {entry.command}" for name, entry in types.items())
        )
    elif live_executable is None:
        lines.append("Nothing will run: the repository has no Procfile and no --executable was given")
    runs = detail.get("status") == "running"
    lines.append(f"{app} is running the new code" if runs else f"Start it with: ps:start {app}")
    return Result(
        "\n".join(lines),
        {
            "commit": commit,
            "ref": params.ref,
            "ref_kind": kind,
            "executable": str(live_executable or ""),
            "types": list(types),
            "running": runs,
        },
    )


async def rebuild(ctx: Context, record: AppRecord) -> Result:
    """`ps:rebuild` of a git app: its recorded commit checked out again from the app's own clone (the
    repository is not asked: the same code), built again, made live; processes that run are replaced."""
    detail, app = record.source.detail, record.name
    commit = detail.get("commit")
    if not commit:
        raise invalid_argument(f"{app} has no commit yet to rebuild: git:sync it first")
    current = ctx.services.app_dir(app) / "current"
    executable = Path(record.settings.executable) if record.settings.executable else None
    params = SyncParams(
        app=app,
        repository=detail.get("repository", ""),
        ref=detail.get("ref") or None,
        build_cmd=detail.get("build_cmd"),
        executable=str(executable.relative_to(current))
        if executable and executable.is_relative_to(current)
        else None,
    )

    async def checkout(release: Path) -> tuple[str, str]:
        await ctx.emit(ProgressEvent("checking out"))
        cache = ctx.services.app_dir(app) / "repo.git"
        try:
            await ctx.services.deploy_work(ctx.peer.uid, gitsrc.checkout, cache, commit, release)
        except gitsrc.GitError as exc:
            raise DeployFailed("fetch failure", str(exc)) from None
        return commit, detail.get("ref_kind", "commit")

    return await _deploy_git(ctx, params, params.repository, checkout, "Rebuilding")


async def _fetch_and_checkout(
    ctx: Context, app: str, repository: gitsrc.Repository, ref: str | None, release: Path
) -> tuple[str, str]:
    data_dir = ctx.services.data_dir
    askpass = await trio.to_thread.run_sync(gitsrc.ensure_askpass, data_dir)
    home = None if ctx.peer.uid == 0 else await trio.to_thread.run_sync(gitsrc.ensure_home, data_dir)
    env = gitsrc.git_environment(askpass, repository, home)
    cache = ctx.services.app_dir(app) / "repo.git"
    await record_status(ctx, app, "fetching")
    await ctx.emit(ProgressEvent("fetching"))
    try:
        await ctx.services.deploy_work(ctx.peer.uid, gitsrc.fetch, cache, repository, env)
        commit, kind = await trio.to_thread.run_sync(gitsrc.resolve, cache, ref)
        await ctx.emit(ProgressEvent("checking out"))
        await ctx.services.deploy_work(ctx.peer.uid, gitsrc.checkout, cache, commit, release)
    except gitsrc.GitError as exc:
        raise DeployFailed("fetch failure", str(exc)) from None
    return commit, kind


async def _build(ctx: Context, record: AppRecord, params: SyncParams, release: Path) -> Path | None:
    """The build runs as the app's user (this sync's `--user`, else the app's), in the release, which that
    user owns while the build runs; its output is kept as a run's is (readable by the app's group)."""
    if params.build_cmd:
        await record_status(ctx, record.name, "building")
        await ctx.emit(ProgressEvent("building"))
        app_dir = ctx.services.app_dir(record.name)
        folder = app_dir / "builds" / release.name
        user = apply_options(record.settings, params)[0].user
        gid = modes.app_group(user)
        await trio.to_thread.run_sync(modes.open_path, app_dir, folder.parent, gid)
        await trio.to_thread.run_sync(modes.open_output_folder, folder, gid)
        identity = resolve_identity(user)
        if identity is not None:
            await trio.to_thread.run_sync(modes.open_path, app_dir, release.parent, gid)
            await trio.to_thread.run_sync(modes.hand_over, release, identity.uid, identity.gid)
        config = await ctx.store.get_config(record.name)
        spec = ProcessSpec(
            app=record.name,
            process="build",
            # the build command is the user's own shell command: the single argument of sh -c
            argv=["/bin/sh", "-c", params.build_cmd],
            cwd=str(release),
            env=environment(record, config, identity),
            user=user,
        )
        limit = ctx.services.config.job_output_max_bytes
        outcome = await execute(
            ctx.processes.host_runner(), spec, folder, params.build_timeout, None, ctx.emit, limit
        )
        if outcome.timed_out:
            raise DeployFailed(
                "build failure", f"build timed out after {params.build_timeout} s (log: {folder}/logs.txt)"
            )
        if outcome.error or not outcome.status or not outcome.status.success:
            what = outcome.error or (outcome.status.describe() if outcome.status else "failed")
            raise DeployFailed("build failure", f"build failed: {what} (log: {folder}/logs.txt)")
    if params.executable is None:
        return None
    try:
        return await trio.to_thread.run_sync(gitsrc.check_executable_in, release, params.executable)
    except gitsrc.GitError as exc:
        raise DeployFailed("build failure", str(exc)) from None
