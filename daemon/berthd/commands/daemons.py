"""daemons:register, daemons:unregister, daemons:list (AppAPI's `app_api:daemon:*`), daemons:default,
daemons:check."""

from __future__ import annotations

from typing import Annotated

import msgspec

from berthd.commands.apps import DestroyParams, destroy
from berthd.deploy.daemons import (
    RegisterParams,
    build_daemon,
    check_name,
    public_view,
    render_table,
)
from berthd.errors import CommandError, daemon_unavailable, not_found
from berthd.server.context import Context
from berthd.server.params import NoParams, Params, about
from berthd.server.registry import REGISTRY, Result
from berthd.store.records import DaemonRecord


class UnregisterParams(Params):
    daemon_config_name: Annotated[str, about("the daemon's name")]
    force: Annotated[bool, about("destroy the apps that use it too")] = False
    positional = ("daemon_config_name",)
    metavars = {"daemon_config_name": "DAEMON-CONFIG-NAME"}
    daemon_fields = ("daemon_config_name",)


class NameParams(Params):
    name: Annotated[str, about("a deploy daemon's name")]
    positional = ("name",)
    daemon_fields = ("name",)


class DefaultParams(Params):
    name: Annotated[str | None, about("the new default (none: show the default)")] = None
    positional = ("name",)
    daemon_fields = ("name",)


async def load_daemon(ctx: Context, name: str) -> DaemonRecord:
    record = await ctx.store.get_daemon(check_name(name))
    if record is None:
        raise not_found(f"Daemon config {name} not found.")
    return record


@REGISTRY.command(
    "daemons:register",
    aliases=("app_api:daemon:register",),
    summary="register a deploy daemon (also app_api:daemon:register)",
    mutating=True,
)
async def register(ctx: Context, params: RegisterParams) -> Result:
    record, warnings = build_daemon(params)
    if not await ctx.store.register_daemon(record, make_default=params.set_default):
        return Result(
            f"Registration skipped, as the daemon config `{record.name}` already exists.",
            {"name": record.name, "registered": False},
        )
    record = msgspec.structs.replace(record, is_default=params.set_default)
    lines = [*warnings, "Daemon config successfully registered."]
    return Result("\n".join(lines), {**public_view(record), "registered": True})


@REGISTRY.command(
    "daemons:unregister",
    aliases=("app_api:daemon:unregister",),
    summary="unregister a deploy daemon; --force removes its apps first (also app_api:daemon:unregister)",
    mutating=True,
)
async def unregister(ctx: Context, params: UnregisterParams) -> Result:
    name = params.daemon_config_name
    await load_daemon(ctx, name)
    apps = await ctx.store.apps_using_daemon(name)
    if apps and not params.force:
        message = f"{name} daemon contains {len(apps)} apps, please remove them first to proceed."
        raise CommandError("conflict", message, {"daemon": name, "apps": apps})
    lines = []
    for app in apps:
        lines.append((await destroy(ctx, DestroyParams(app=app, force=True))).output)
    await ctx.store.delete_daemon(name)
    lines.append("Daemon config unregistered.")
    return Result("\n".join(lines), {"name": name, "removed_apps": apps})


@REGISTRY.command(
    "daemons:list",
    aliases=("app_api:daemon:list",),
    summary="the registered deploy daemons, secrets as *** (also app_api:daemon:list)",
    mutating=False,
)
async def list_(ctx: Context, params: NoParams) -> Result:
    records = [r for r in await ctx.store.list_daemons() if ctx.caller.may_use_daemon(r.name)]
    return Result(render_table(records), [public_view(r) for r in records])


@REGISTRY.command(
    "daemons:default", summary="make a deploy daemon the default (without NAME: which one is)", mutating=True
)
async def default(ctx: Context, params: DefaultParams) -> Result:
    if params.name is None:
        record = await ctx.store.get_default_daemon()
        if record is None:
            return Result("No default daemon config.", {"default": None})
        return Result(record.name, {"default": record.name})
    record = await load_daemon(ctx, params.name)
    await ctx.store.set_default_daemon(record.name)
    return Result(f"Daemon config {record.name} is now the default.", {"default": record.name})


@REGISTRY.command(
    "daemons:check",
    summary="is a deploy daemon reachable: its Docker engine (_ping), HaRP (/info), its Kubernetes cluster",
    mutating=False,
)
async def check(ctx: Context, params: NameParams) -> Result:
    record = await load_daemon(ctx, params.name)
    runner = ctx.processes.daemon_runner(record)
    if not runner.features.engine:
        return Result(
            f"Daemon config {record.name} is {record.deploy_id}: there is no Docker engine to check.",
            {"name": record.name, "deploy_id": record.deploy_id, "docker_version": None},
        )
    status = await runner.check(record)
    if not status.reachable:
        raise daemon_unavailable(record.name, status.why or "unknown")
    data: dict[str, object] = {
        "name": record.name,
        "deploy_id": record.deploy_id,
        "docker_version": status.version,
    }
    shown = [f"Docker {status.version}"] if status.version else []
    if status.harp_version is not None:
        data["harp_version"] = status.harp_version
        shown.insert(0, f"HaRP {status.harp_version}")
    if status.kubernetes_reachable is not None:
        data["kubernetes_reachable"] = status.kubernetes_reachable
        shown.append("Kubernetes reachable")
    return Result(f"Deploy daemon {record.name} is reachable: {', '.join(shown) or 'yes'}", data)
