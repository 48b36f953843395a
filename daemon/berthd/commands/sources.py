"""How code reaches an app: the options every source command shares, the one deploy pipeline every source
goes through, and `apps:from-local`.

A deploy that builds a release (git, archives) fills a fresh release folder without the global lock (one
deploy at a time per app), and `current` moves to it only when everything worked, so a failed clone,
build or unpack leaves the previous version in place and running. Every source ends the same way, under
the lock: the source and settings are recorded, the environment added, and the processes replaced when
the app runs (or is meant to start now).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
import trio

from berthd.apps.launch import check_cwd_allowed, sanitise_args
from berthd.apps.settings import (
    check_cwd,
    check_mount,
    check_restart_policy,
    check_timeout,
    check_user,
    parse_pairs,
)
from berthd.commands.apps import (
    app_for_source,
    check_local_executable,
    erase_app,
    make_app_mounts,
    settings_for,
)
from berthd.errors import CommandError
from berthd.host.requirements import ensure_compatible, parse_requirement_pair
from berthd.log import LOG
from berthd.runners.table import through_daemon
from berthd.server.context import Context
from berthd.server.params import AppName, Params, about
from berthd.server.registry import REGISTRY, Result
from berthd.sources import releases
from berthd.store import Store, modes
from berthd.store.records import AppRecord, AppSettings, AppSource
from berthd.supervision.manager import RUNNING


class SourceOptions(Params):
    """`--cwd --env --timeout --user --description --require --mount --restart-policy --daemon -- ARG ...`"""

    cwd: Annotated[str | None, about("the working directory (relative: in the checkout)")] = None
    env: Annotated[list[str], about("an environment variable of the app (repeatable)")] = msgspec.field(
        default_factory=list
    )
    timeout: Annotated[int | None, about("seconds a one-shot run may take (default 600)")] = None
    user: Annotated[str | None, about("USER[:GROUP] its processes run as (names or ids)")] = None
    description: Annotated[str | None, about("a description of the app")] = None
    require: Annotated[list[str], about("a host requirement (min_memory_mb=512 ...; repeatable)")] = (
        msgspec.field(default_factory=list)
    )
    mount: Annotated[list[str], about("a folder under the app's own, as BERTH_INPUT_DIR/OUTPUT_DIR")] = (
        msgspec.field(default_factory=list)
    )
    restart_policy: Annotated[str | None, about("no, on-failure[:N] or always (the default)")] = None
    daemon: Annotated[str | None, about("the deploy daemon to go through (auto: placed)")] = None
    args: Annotated[list[str], about("the executable's arguments")] = msgspec.field(default_factory=list)
    rest = "args"
    secret = frozenset({"env"})  # environment values are often credentials: logged as KEY=***
    metavars = {
        "env": "KEY=VALUE",
        "require": "KEY=VALUE",
        "mount": "PATH:INPUT|OUTPUT",
        "timeout": "SECONDS",
        "cwd": "DIR",
        "user": "USER[:GROUP]",
        "description": "TEXT",
        "restart_policy": "POLICY",
        "daemon": "NAME",
    }


def apply_options(settings: AppSettings, options: SourceOptions) -> tuple[AppSettings, dict[str, str]]:
    """The options checked and folded into the settings; the environment to add to the app's config."""
    changes: dict[str, object] = {}
    if options.cwd is not None:
        changes["cwd"] = check_cwd(options.cwd)
    if options.timeout is not None:
        changes["timeout"] = check_timeout(options.timeout)
    if options.user is not None:
        changes["user"] = check_user(options.user)
    if options.description is not None:
        changes["description"] = options.description
    if options.restart_policy is not None:
        changes["restart_policy"] = check_restart_policy(options.restart_policy)
    if options.daemon is not None:
        changes["daemon"] = options.daemon
    if options.mount:
        changes["mounts"] = [check_mount(m) for m in options.mount]
    if options.require:
        changes["requirements"] = dict(parse_requirement_pair(pair) for pair in options.require)
    if options.args:
        changes["args"] = sanitise_args(options.args)
    return msgspec.structs.replace(settings, **changes), parse_pairs(options.env)


async def check_host_meets(ctx: Context, app: str, settings: AppSettings, kind: str) -> None:
    """This host must meet the requirements of an app that will run on it."""
    if not through_daemon(kind):
        await ensure_compatible(ctx.services.capabilities, app, settings.requirements)


async def check_cwd_place(ctx: Context, app: str, settings: AppSettings, detail: dict[str, str]) -> None:
    """A --cwd given must be a folder the app may start in (a relative one is checked at start)."""
    if settings.cwd:
        app_dir = ctx.services.app_dir(app)
        await trio.to_thread.run_sync(
            lambda: check_cwd_allowed(settings, detail, app_dir, relative_too=False)
        )


# the deploy pipeline


class DeployFailed(Exception):
    """A deploy step failed for a reason the user can act on; `status` is recorded in the source."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def record_status(ctx: Context, app: str, status: str, error: str | None = None) -> None:
    record = await ctx.store.get_app(app)
    if record is None:
        return
    detail = dict(record.source.detail)
    detail["status"] = status
    if error:
        detail["error"] = error
    else:
        detail.pop("error", None)
    await ctx.store.save_source(app, msgspec.structs.replace(record.source, detail=detail), record.settings)


@dataclass(frozen=True, slots=True)
class Begun:
    """A deploy under way: the app as it was, the settings and environment it will get."""

    record: AppRecord
    settings: AppSettings
    env: dict[str, str]
    first: bool  # the app did not exist before this deploy: if it fails, nothing of it stays


async def begin_deploy(ctx: Context, app: str, options: SourceOptions, kind: str) -> Begun:
    """Options checked, the app made if new and its source marked pending; then the global lock is let go
    (what follows waits on the network or a build)."""
    existing = await ctx.store.get_app(app)
    settings, env = apply_options(settings_for(ctx, existing), options)
    await check_host_meets(ctx, app, settings, kind)
    await check_cwd_place(ctx, app, settings, existing.source.detail if existing else {})
    record, first = await app_for_source(ctx, app)
    if record.source.kind != kind:
        await ctx.store.save_source(app, AppSource(kind, {"status": "pending"}), record.settings)
    else:
        await record_status(ctx, app, "pending")
    ctx.release_lock()
    return Begun(record, settings, env, first)


Build = Callable[[Path], Awaitable[tuple[dict[str, str], AppSettings]]]
"""Fills a release folder; returns the source's detail and the settings to record with it."""


async def deploy_release(
    ctx: Context, app: str, kind: str, begun: Begun, build: Build, *, start: bool
) -> tuple[dict[str, str], AppSettings]:
    """A release built, then made live: `current` moves to it and the source is recorded. A failure
    discards the release and records why (`DeployFailed` becomes `invalid_argument`); when the deploy
    was the app's first, the app goes with it, as if it had never been asked for."""
    env = begun.env
    app_dir = ctx.services.app_dir(app)
    async with ctx.services.source_lock(app):
        release = await trio.to_thread.run_sync(releases.new_release, app_dir, kind)
        try:
            detail, settings = await build(release)
            # the code is berthd's again (a build's user owned it), readable by the app's group only
            gid = modes.app_group(settings.user)
            await trio.to_thread.run_sync(modes.open_path, app_dir, releases.releases_dir(app_dir), gid)
            await trio.to_thread.run_sync(modes.hand_over, release, os.geteuid(), gid)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await _discard(app, release)
                if begun.first and isinstance(exc, DeployFailed):
                    # (one cut short by berthd's stop is recorded instead, for its user to see at the next start)
                    async with ctx.services.lock.held():
                        await erase_app(ctx, app)
                    raise CommandError(
                        "invalid_argument", f"{exc.message} (nothing of {app} was kept)"
                    ) from None
                if not isinstance(exc, DeployFailed):
                    # cut short (berthd stopping) or broken: the status says so, never "downloading"
                    with trio.move_on_after(CUT_SHORT_RECORD_TIMEOUT):
                        async with ctx.services.lock.held():
                            await record_status(ctx, app, "failed", _cut_short(exc))
            if not isinstance(exc, DeployFailed):
                raise
            async with ctx.services.lock.held():
                await record_status(ctx, app, exc.status, exc.message)
            raise CommandError("invalid_argument", exc.message) from None
        async with ctx.services.lock.held():
            await trio.to_thread.run_sync(releases.activate, app_dir, release)
            detail = {**detail, "release": release.name}
            detail = await go_live(ctx, app, AppSource(kind, detail), settings, env, start=start)
        await trio.to_thread.run_sync(releases.prune, app_dir)  # out of the global lock: it can take long
    return detail, settings


CUT_SHORT_RECORD_TIMEOUT = 5.0


async def _discard(app: str, release: Path) -> None:
    """A failed deploy's release removed; if it cannot be, that is logged and the failure is still
    recorded (its marker stays, so the next start sweeps it)."""
    try:
        await trio.to_thread.run_sync(releases.discard, release)
    except OSError:
        LOG.exception("%s: cannot remove the failed release %s", app, release.name)


def _cut_short(exc: BaseException) -> str:
    if isinstance(exc, trio.Cancelled):
        return "cancelled: berthd stopped before the deploy ended"
    return "failed: internal error (see the daemon log)"


async def go_live(
    ctx: Context, app: str, source: AppSource, settings: AppSettings, env: dict[str, str], *, start: bool
) -> dict[str, str]:
    """The last step of every deploy (under the lock): the source, settings and environment recorded,
    and the app's processes replaced when it runs, or started when `start` says so. The detail recorded
    says which (`status`: running or ready)."""
    desired, _ = await ctx.store.get_runtime(app)
    runs = start or desired == RUNNING
    detail = {**source.detail, "status": "running" if runs else "ready"}
    await make_app_mounts(ctx, app, settings)
    await ctx.store.save_source(app, AppSource(source.kind, detail), settings)
    if env:
        await ctx.store.set_config(app, env)
    if runs:
        await ctx.processes.redeploy(app)
    return detail


IN_PROGRESS = frozenset({"pending", "fetching", "downloading", "unpacking", "building"})
INTERRUPTED = "interrupted: berthd stopped during the deploy"


async def sweep_interrupted_deploys(store: Store, app_dir: Callable[[str], Path]) -> None:
    """At start, before anything runs: every deploy the last berthd did not live to finish is cleaned
    up (its partial release, download and build folder) and recorded as failed. The live release, if
    any, is untouched, and runs again if it was meant to. Nothing here stops berthd from starting: an app
    whose leftovers cannot be removed is logged and recorded as failed, and the sweep goes on."""
    for record in await store.list_apps():
        try:
            removed = await trio.to_thread.run_sync(releases.sweep_interrupted, app_dir(record.name))
        except OSError:
            LOG.exception("%s: cannot sweep what an interrupted deploy left", record.name)
            removed = []
        status = record.source.detail.get("status")
        if status in IN_PROGRESS:
            detail = {**record.source.detail, "status": "failed", "error": f"{INTERRUPTED} ({status})"}
            await store.save_source(record.name, AppSource(record.source.kind, detail), record.settings)
        if removed or status in IN_PROGRESS:
            LOG.warning(
                "%s: a deploy was interrupted (%s); removed: %s", record.name, status, ", ".join(removed)
            )


# apps:from-local


class FromLocalParams(SourceOptions, kw_only=True):
    app: AppName
    executable: str
    positional = ("app", "executable")


@REGISTRY.command(
    "apps:from-local",
    summary="run an executable already on this host",
    mutating=True,
    creates_app=True,
    runs_code=True,
)
async def from_local(ctx: Context, params: FromLocalParams) -> Result:
    executable = await check_local_executable(ctx, params.executable)
    existing = await ctx.store.get_app(params.app)
    base = settings_for(ctx, existing)
    settings, env = apply_options(msgspec.structs.replace(base, executable=executable), params)
    await check_host_meets(ctx, params.app, settings, "local")
    await check_cwd_place(ctx, params.app, settings, {})
    _, created = await app_for_source(ctx, params.app)
    try:
        await go_live(
            ctx, params.app, AppSource("local", {"executable": executable}), settings, env, start=False
        )
    except CommandError:
        if created:
            await ctx.store.delete_app(params.app)
        raise
    verb = "Creating" if created else "Updating"
    return Result(
        f"{verb} {params.app} from {executable}... done", {"app": params.app, "executable": executable}
    )
