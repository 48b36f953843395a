"""apps:create, apps:list, apps:info, apps:destroy, apps:set, and dokku's apps:exists, apps:report,
apps:rename."""

from __future__ import annotations

import dataclasses
import functools
import os
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import trio

from berthd.access.enforce import caller_account
from berthd.apps.launch import check_cwd_allowed, make_mounts, mount_folder, process_types, resolve_identity
from berthd.apps.rename import finish_rename
from berthd.apps.settings import SETTING_KEYS, apply_setting, check_executable, describe_settings
from berthd.deploy.exapp import volume_of
from berthd.errors import CommandError, conflict, invalid_argument, not_found
from berthd.host.requirements import ensure_compatible
from berthd.runners import RunnerError
from berthd.runners.table import runner_class, through_daemon
from berthd.server.context import Context
from berthd.server.params import AUTO_DAEMON, AppName, NoParams, Params, Touches, about
from berthd.server.registry import REGISTRY, Result
from berthd.sources.caller import Caller, NotReadable, check_executable_as, reach_folder, run_as
from berthd.store import trees
from berthd.store.records import AppRecord, AppSettings, AppSource
from berthd.supervision.manager import RUNNING

SHOWN_SOURCE_DETAIL = (
    "repository",
    "ref",
    "commit",
    "url",
    "status",
    "error",
    "filename",
    "upload_hash",
    "image",
    "placement",
)


class AppParams(Params):
    app: AppName
    positional = ("app",)


class DestroyParams(Params):
    app: AppName
    force: Annotated[bool, about("required: yes, destroy it")] = False
    keep_data: Annotated[bool, about("keep an image app's data volume")] = False
    positional = ("app",)


class SetParams(Params):
    app: AppName
    key: Annotated[
        str,
        about(
            "the setting: for apps:set args, cwd, timeout, user, description, daemon, executable, "
            "restart-policy, require.KEY, mount; for ps:set restart-policy"
        ),
    ]
    value: Annotated[str, about("its new value (empty: unset)")]
    positional = ("app", "key", "value")

    def touches(self) -> Touches:
        # `user` names the account the app will run as (empty: berthd's own), `daemon` its deploy daemon
        if self.key == "user":
            return Touches(self.app, user=self.value)
        if self.key == "daemon" and self.value not in ("", AUTO_DAEMON):
            return Touches(self.app, daemons=(self.value,))
        return Touches(self.app)


async def load_app(ctx: Context, name: str) -> AppRecord:
    record = await ctx.store.get_app(name)
    if record is None:
        raise not_found(f"App {name} does not exist")
    return record


async def app_for_source(ctx: Context, name: str) -> tuple[AppRecord, bool]:
    """The app, created when it does not exist yet (and whether it was)."""
    record = await ctx.store.get_app(name)
    if record is not None:
        return record, False
    return await ctx.store.create_app(name, settings_for(ctx, None)), True


async def check_local_executable(ctx: Context, path: str) -> str:
    """An executable on this host that the caller itself could run (judged with its rights first, so
    that a caller learns nothing of paths it may not reach), and berthd too."""
    if os.path.isabs(path) and not ctx.peer.is_root:
        try:
            await ctx.services.deploy_work(ctx.peer.uid, check_executable_as, Caller.of(ctx.peer), path)
        except NotReadable as exc:
            raise invalid_argument(str(exc)) from None
    return await trio.to_thread.run_sync(check_executable, path)


async def make_app_mounts(ctx: Context, app: str, settings: AppSettings) -> None:
    """The app's mounts made when they are defined, not at its first start, as its user (see
    `berthd.apps.launch.make_mounts`). A caller other than root must reach a mount root's path with its
    own rights: berthd makes nothing for it where it could not go itself."""
    caller = Caller.of(ctx.peer)
    for mount in settings.mounts:
        if mount.folder is not None and not caller.is_root:
            reach = functools.partial(reach_folder, mount.folder)
            why = await ctx.services.deploy_work(ctx.peer.uid, run_as, caller, reach)
            if why:
                raise invalid_argument(f"invalid mount {mount.path}: {why}")
    if settings.mounts:
        app_dir = ctx.services.app_dir(app)
        identity = resolve_identity(settings.user)
        await trio.to_thread.run_sync(make_mounts, settings, app_dir, identity)


def settings_for(ctx: Context, existing: AppRecord | None) -> AppSettings:
    """The app's settings; a new app's run as the caller who makes it (root's, as berthd)."""
    if existing is not None:
        return existing.settings
    return AppSettings(user=caller_account(ctx.peer))


async def runner_names(ctx: Context, records: list[AppRecord]) -> dict[str, str]:
    """The name of each app's runner, from the runner table ("none" while it has nothing to run)."""
    daemons = {d.name: d for d in await ctx.store.list_daemons()}
    default = next((d for d in daemons.values() if d.is_default), None)
    names: dict[str, str] = {}
    for record in records:
        name = record.settings.daemon or record.source.detail.get("daemon")
        daemon = daemons.get(name) if name else default
        try:
            names[record.name] = runner_class(record, daemon).name if process_types(record) else "none"
        except LookupError:
            names[record.name] = "none"
    return names


def app_summary(record: AppRecord, runner: str) -> dict[str, object]:
    return {
        "name": record.name,
        "created_at": datetime.fromtimestamp(record.created_at, UTC).isoformat(timespec="seconds"),
        "source": record.source.kind,
        "runner": runner,
        "daemon": record.settings.daemon,
    }


@REGISTRY.command("apps:create", summary="create an empty app", mutating=True, creates_app=True)
async def create(ctx: Context, params: AppParams) -> Result:
    await ctx.store.create_app(params.app, settings_for(ctx, None))
    return Result(f"Creating {params.app}... done")


@REGISTRY.command("apps:list", summary="the apps, one a line", mutating=False)
async def list_(ctx: Context, params: NoParams) -> Result:
    records = [r for r in await ctx.store.list_apps() if ctx.caller.may_see(r.name)]
    runners = await runner_names(ctx, records)
    return Result("\n".join(r.name for r in records), [app_summary(r, runners[r.name]) for r in records])


@REGISTRY.command("apps:info", summary="an app's source, runner, settings and processes", mutating=False)
async def info(ctx: Context, params: AppParams) -> Result:
    record = await load_app(ctx, params.app)
    config_keys = sorted(await ctx.store.get_config(params.app))
    runner = (await runner_names(ctx, [record]))[record.name]
    data = {
        **app_summary(record, runner),
        "source_detail": record.source.detail,
        "settings": msgspec.to_builtins(record.settings),
        "config_keys": config_keys,
        # each mount with the folder it is on this host (its own path in a mount root, else the app's)
        "mounts": [
            {
                "path": m.path,
                "function": m.function,
                "folder": mount_folder(m, ctx.services.app_dir(record.name)),
            }
            for m in record.settings.mounts
        ],
        "processes": ctx.processes.report(params.app),
    }
    rows = [
        ("Name", record.name),
        ("Created", str(data["created_at"])),
        ("Source", record.source.kind),
        *[(f"Source {k}", v) for k, v in record.source.detail.items() if k in SHOWN_SOURCE_DETAIL],
        ("Runner", runner),
        ("Daemon", record.settings.daemon or "-"),
        *[(f"Setting {k}", v) for k, v in describe_settings(record.settings) if v],
        *[(f"Mount {m['path']}", f"{m['folder']} ({m['function']})") for m in data["mounts"]],
        ("Config keys", ", ".join(config_keys) or "-"),
        ("Processes", ", ".join(f"{p['process']} {p['state']}" for p in data["processes"]) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"=====> {record.name}", *(f"{(k + ':').ljust(width + 1)} {v}" for k, v in rows)]
    return Result("\n".join(lines), data)


@REGISTRY.command("apps:destroy", summary="stop everything of an app and remove it", mutating=True)
async def destroy(ctx: Context, params: DestroyParams) -> Result:
    if not params.force:
        raise CommandError("invalid_argument", "Requires --force flag")
    await load_app(ctx, params.app)
    await erase_app(ctx, params.app, keep_data=params.keep_data)
    return Result(f"Destroying {params.app}... done")


async def erase_app(ctx: Context, app: str, *, keep_data: bool = False) -> None:
    """Everything of the app gone: its processes and containers, its row, its runs, its files."""
    await ctx.processes.remove_app(app, keep_data=keep_data)
    # The row goes first: a crash after it leaves only files, which the start-up sweep removes.
    await ctx.store.delete_app(app)
    await ctx.store.delete_jobs(app)
    await trio.to_thread.run_sync(trees.remove_or_log, ctx.services.app_dir(app))


@REGISTRY.command(
    "apps:set",
    summary="change one setting of an app (an empty VALUE unsets it)",
    mutating=True,
    runs_code=True,
)
async def set_(ctx: Context, params: SetParams) -> Result:
    record = await load_app(ctx, params.app)
    if params.key not in SETTING_KEYS and not params.key.startswith("require."):
        raise invalid_argument(f"unknown setting {params.key!r}; known: {', '.join(SETTING_KEYS)}")
    if params.key == "executable" and params.value:
        await check_local_executable(ctx, params.value)
    settings = await trio.to_thread.run_sync(apply_setting, record.settings, params.key, params.value)
    if params.key == "cwd" and settings.cwd:
        app_dir = ctx.services.app_dir(params.app)
        await trio.to_thread.run_sync(
            lambda: check_cwd_allowed(settings, record.source.detail, app_dir, relative_too=False)
        )
    if params.key.startswith("require.") and not through_daemon(record.source.kind):
        await ensure_compatible(ctx.services.capabilities, params.app, settings.requirements)
    if params.key == "mount":
        await make_app_mounts(ctx, params.app, settings)
    await ctx.store.save_settings(params.app, settings)
    shown = dict(describe_settings(settings)).get(params.key, params.value)
    if params.value == "":
        return Result(f"Unset {params.key} of {params.app}")
    return Result(f"Set {params.key} of {params.app} to {shown}")


@REGISTRY.command("apps:exists", summary="is there an app of this name (not_found when not)", mutating=False)
async def exists(ctx: Context, params: AppParams) -> Result:
    await load_app(ctx, params.app)  # a hidden app was answered as a missing one before this runs
    return Result(f"App {params.app} exists", {"app": params.app, "exists": True})


DEPLOY_SOURCE_METADATA = {"git": "commit", "archive": "url", "image": "image", "upload": "filename"}


@REGISTRY.command(
    "apps:report", summary="dokku's app report: dir, deploy source, created at ...", mutating=False
)
async def report(ctx: Context, params: AppParams) -> Result:
    record = await load_app(ctx, params.app)
    desired, _ = await ctx.store.get_runtime(params.app)
    detail = record.source.detail
    metadata = detail.get(
        DEPLOY_SOURCE_METADATA.get(record.source.kind, ""), record.settings.executable or ""
    )
    processes = ctx.processes.report(params.app)
    fields = {
        "app-created-at": int(record.created_at),
        "app-deploy-source": record.source.kind,
        "app-deploy-source-metadata": metadata,
        "app-dir": str(ctx.services.app_dir(params.app)),
        "app-locked": ctx.services.source_lock(params.app).locked(),  # a deploy is under way
        "app-runner": (await runner_names(ctx, [record]))[record.name],
        "app-daemon": record.settings.daemon or "",
        "app-user": record.settings.user or "",
        "app-desired-state": desired,
        "app-processes": ", ".join(f"{p['process']} {p['state']}" for p in processes),
    }
    rows = [(key.removeprefix("app-").replace("-", " "), value) for key, value in fields.items()]
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"=====> {record.name} app information"]
    for label, value in rows:
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        lines.append(f"       {('App ' + label + ':').ljust(width + 5)} {shown}".rstrip())
    return Result("\n".join(lines), fields)


class RenameParams(Params):
    app: AppName
    new: AppName
    force: Annotated[
        bool, msgspec.Meta(description="an image app too (its container is made anew, its volume kept)")
    ] = False
    positional = ("app", "new")
    metavars = {"app": "OLD", "new": "NEW"}

    def touches(self) -> Touches:
        # both names are judged: the caller must be allowed the app it renames and the name it gives
        return dataclasses.replace(super().touches(), other_apps=(self.new,))


@REGISTRY.command(
    "apps:rename",
    summary="rename an app: its config, settings, source, processes and history go with it",
    mutating=True,
    runs_code=True,  # its processes start again, as ps:restart starts them
)
async def rename(ctx: Context, params: RenameParams) -> Result:
    old, new = params.app, params.new
    record = await load_app(ctx, old)
    if new == old or await ctx.store.get_app(new) is not None:
        raise conflict(f"App {new} already exists")
    await _check_renamable(ctx, record, params.force)
    old_dir, new_dir = ctx.services.app_dir(old), ctx.services.app_dir(new)
    if await trio.to_thread.run_sync(os.path.lexists, new_dir):
        raise conflict(f"App {new} cannot have its folder: {new_dir} is in the way")
    desired, _ = await ctx.store.get_runtime(old)
    await ctx.processes.release_app(old)
    try:
        if through_daemon(record.source.kind):
            record = await _drop_container(ctx, record)
        await ctx.store.rename_app(old, new, str(old_dir), str(new_dir))
    except BaseException:
        if desired == RUNNING:
            with trio.CancelScope(shield=True):
                await ctx.processes.start_app(old, resume=True)
        raise
    renamed = await load_app(ctx, new)
    await finish_rename(ctx.store, ctx.services.app_dir, renamed)
    ctx.services.source_locks.pop(old, None)
    if desired == RUNNING:
        await ctx.processes.start_app(new, resume=True)
    rows = ctx.processes.report(new)
    return Result(f"Renaming {old} to {new}... done", {"app": new, "renamed_from": old, "processes": rows})


async def _check_renamable(ctx: Context, record: AppRecord, force: bool) -> None:
    """Nothing is under way that writes into the app's folder by its old name, and an image app's
    user knows what a rename does to it."""
    name = record.name
    if ctx.services.source_lock(name).locked():
        raise conflict(f"a deploy of {name} is under way: rename it when it has ended")
    if any(job.state == "running" for job in await ctx.store.list_jobs(name)):
        raise conflict(f"a run of {name} is under way: rename it when it has ended")
    if through_daemon(record.source.kind) and not force:
        raise invalid_argument(
            f"{name} is an image app: AppAPI knows it by its name, its container is made anew under the new "
            f"one and its data volume keeps its name ({volume_of(record)}), as a volume cannot be renamed. "
            "Give --force to rename it all the same"
        )


async def _drop_container(ctx: Context, record: AppRecord) -> AppRecord:
    """An image app's container removed (the new one has the new name), its volume kept and recorded."""
    runner, target = await ctx.processes.runner_for(record)
    try:
        await runner.remove(target, keep_data=True)
    except RunnerError as exc:
        raise CommandError("unavailable", str(exc)) from None
    detail = {**record.source.detail, "volume": volume_of(record)}
    await ctx.store.save_source(record.name, AppSource(record.source.kind, detail), record.settings)
    return msgspec.structs.replace(record, source=AppSource(record.source.kind, detail))
