"""config:set, config:unset, config:get, config:show, config:keys, config:export: an app's environment
variables. A change restarts the app's running processes so that they take it, as dokku does, unless
`--no-restart`; a process starting meanwhile starts with the new config either way."""

from __future__ import annotations

import shlex
from typing import Annotated

import msgspec

from berthd.apps.settings import check_variable_name, parse_pairs
from berthd.commands.apps import load_app
from berthd.commands.ps import restart_for_config
from berthd.errors import not_found
from berthd.server.context import Context
from berthd.server.params import AppName, Params
from berthd.server.registry import REGISTRY, Result

NonEmpty = Annotated[list[str], msgspec.Meta(min_length=1)]


class SetParams(Params):
    app: AppName
    pairs: NonEmpty
    no_restart: bool = False
    positional = ("app", "pairs")
    secret = frozenset({"pairs"})
    metavars = {"pairs": "KEY=VALUE"}


class UnsetParams(Params):
    app: AppName
    keys: NonEmpty
    no_restart: bool = False
    positional = ("app", "keys")
    metavars = {"keys": "KEY"}


class GetParams(Params):
    app: AppName
    key: str
    positional = ("app", "key")


class ShowParams(Params):
    app: AppName
    positional = ("app",)


async def _restarted(ctx: Context, app: str, no_restart: bool) -> tuple[str, list[str]]:
    """The app's running processes restarted to take the new config (unless `no_restart`): a line
    that says which, and their names."""
    if no_restart:
        return "Not restarting (--no-restart): running processes take the change at their next restart", []
    names = await restart_for_config(ctx, app)
    return (f"Restarting {app}: {', '.join(names)}" if names else "No running processes to restart"), names


@REGISTRY.command("config:set", summary="set environment variables of an app", mutating=True, runs_code=True)
async def set_(ctx: Context, params: SetParams) -> Result:
    values = parse_pairs(params.pairs)
    await load_app(ctx, params.app)
    await ctx.store.set_config(params.app, values)
    line, restarted = await _restarted(ctx, params.app, params.no_restart)
    return Result(
        f"Setting config vars of {params.app}: {', '.join(values)}\n{line}",
        {"keys": list(values), "restarted": restarted},
    )


@REGISTRY.command(
    "config:unset", summary="remove environment variables of an app", mutating=True, runs_code=True
)
async def unset(ctx: Context, params: UnsetParams) -> Result:
    keys = [check_variable_name(k) for k in params.keys]
    await load_app(ctx, params.app)
    removed = await ctx.store.unset_config(params.app, keys)
    missing = [k for k in keys if k not in removed]
    lines = [f"Unsetting config vars of {params.app}: {', '.join(removed) or 'none'}"]
    if missing:
        lines.append(f"Not set: {', '.join(missing)}")
    restarted: list[str] = []
    if removed:  # nothing changed, nothing to restart
        line, restarted = await _restarted(ctx, params.app, params.no_restart)
        lines.append(line)
    return Result("\n".join(lines), {"removed": removed, "not_set": missing, "restarted": restarted})


async def _config_of(ctx: Context, app: str) -> dict[str, str]:
    await load_app(ctx, app)
    return await ctx.store.get_config(app)


@REGISTRY.command(
    "config:get", summary="one environment variable of an app", mutating=False, secret_output=True
)
async def get(ctx: Context, params: GetParams) -> Result:
    values = await _config_of(ctx, params.app)
    if params.key not in values:
        raise not_found(f"{params.key} is not set for {params.app}")
    return Result(values[params.key], {params.key: values[params.key]})


@REGISTRY.command(
    "config:show", summary="all environment variables of an app", mutating=False, secret_output=True
)
async def show(ctx: Context, params: ShowParams) -> Result:
    values = await _config_of(ctx, params.app)
    # quoted as the shell would need them (only where needed): `B='two words'`
    return Result("\n".join(f"{k}={shlex.quote(v)}" for k, v in values.items()), values)


@REGISTRY.command("config:keys", summary="the names of an app's environment variables", mutating=False)
async def keys(ctx: Context, params: ShowParams) -> Result:
    names = list(await _config_of(ctx, params.app))
    return Result("\n".join(names), names)


EXPORT_SUMMARY = "an app's environment as shell-safe `export K='V'` lines"


@REGISTRY.command("config:export", summary=EXPORT_SUMMARY, mutating=False, secret_output=True)
async def export(ctx: Context, params: ShowParams) -> Result:
    values = await _config_of(ctx, params.app)
    return Result("\n".join(f"export {k}={single_quoted(v)}" for k, v in values.items()), values)


def single_quoted(value: str) -> str:
    """`value` in single quotes, as POSIX sh reads it back byte for byte: inside them every character
    is itself (newlines, `$`, backslashes) but `'`, which closes, is escaped and reopens: `'\\''`."""
    return "'" + value.replace("'", "'\\''") + "'"
