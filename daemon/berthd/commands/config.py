"""config:set, config:unset, config:get, config:show: an app's environment variables."""

from __future__ import annotations

from typing import Annotated

import msgspec

from berthd.apps.settings import check_variable_name, parse_pairs
from berthd.commands.apps import load_app
from berthd.errors import not_found
from berthd.server.context import Context
from berthd.server.params import AppName, Params
from berthd.server.registry import REGISTRY, Result

NonEmpty = Annotated[list[str], msgspec.Meta(min_length=1)]


class SetParams(Params):
    app: AppName
    pairs: NonEmpty
    positional = ("app", "pairs")
    secret = frozenset({"pairs"})
    metavars = {"pairs": "KEY=VALUE"}


class UnsetParams(Params):
    app: AppName
    keys: NonEmpty
    positional = ("app", "keys")
    metavars = {"keys": "KEY"}


class GetParams(Params):
    app: AppName
    key: str
    positional = ("app", "key")


class ShowParams(Params):
    app: AppName
    positional = ("app",)


@REGISTRY.command("config:set", summary="set environment variables of an app", mutating=True, runs_code=True)
async def set_(ctx: Context, params: SetParams) -> Result:
    values = parse_pairs(params.pairs)
    await load_app(ctx, params.app)
    await ctx.store.set_config(params.app, values)
    return Result(f"Setting config vars of {params.app}: {', '.join(values)}", {"keys": list(values)})


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
    return Result("\n".join(lines), {"removed": removed, "not_set": missing})


@REGISTRY.command(
    "config:get", summary="one environment variable of an app", mutating=False, secret_output=True
)
async def get(ctx: Context, params: GetParams) -> Result:
    await load_app(ctx, params.app)
    values = await ctx.store.get_config(params.app)
    if params.key not in values:
        raise not_found(f"{params.key} is not set for {params.app}")
    return Result(values[params.key], {params.key: values[params.key]})


@REGISTRY.command(
    "config:show", summary="all environment variables of an app", mutating=False, secret_output=True
)
async def show(ctx: Context, params: ShowParams) -> Result:
    await load_app(ctx, params.app)
    values = await ctx.store.get_config(params.app)
    return Result("\n".join(f"{k}={v}" for k, v in values.items()), values)
