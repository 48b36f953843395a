"""apps:create, apps:list, apps:info, apps:destroy, apps:set."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import msgspec
import trio

from berthd.access.enforce import caller_account
from berthd.apps.launch import check_cwd_allowed, process_types
from berthd.apps.settings import SETTING_KEYS, apply_setting, check_executable, describe_settings
from berthd.errors import CommandError, invalid_argument, not_found
from berthd.host.requirements import ensure_compatible
from berthd.runners.table import runner_class, through_daemon
from berthd.server.context import Context
from berthd.server.params import AUTO_DAEMON, AppName, NoParams, Params, Touches
from berthd.server.registry import REGISTRY, Result
from berthd.sources.caller import Caller, NotReadable, check_executable_as
from berthd.store import trees
from berthd.store.records import AppRecord, AppSettings

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
    force: bool = False
    keep_data: bool = False
    positional = ("app",)


class SetParams(Params):
    app: AppName
    key: str
    value: str
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
    await ctx.store.save_settings(params.app, settings)
    shown = dict(describe_settings(settings)).get(params.key, params.value)
    if params.value == "":
        return Result(f"Unset {params.key} of {params.app}")
    return Result(f"Set {params.key} of {params.app} to {shown}")
