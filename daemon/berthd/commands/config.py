"""config:set, config:unset, config:get, config:show: an app's environment variables."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from berthd.commands.apps import load_app
from berthd.errors import invalid_argument, not_found
from berthd.server.context import Context
from berthd.server.params import AppName, Params
from berthd.server.registry import REGISTRY, Result

ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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


def _check_key(key: str) -> str:
    if not ENV_KEY.match(key):
        raise invalid_argument(
            f"invalid variable name {key!r}: letters, digits and _, not starting with a digit"
        )
    return key


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise invalid_argument(f"invalid pair {key!r}: expected KEY=VALUE")
        if "\x00" in value:
            raise invalid_argument(f"invalid value for {key}: contains a NUL byte")
        values[_check_key(key)] = value
    return values


@REGISTRY.command("config:set", summary="set environment variables of an app", mutating=True)
async def set_(ctx: Context, params: SetParams) -> Result:
    values = parse_pairs(params.pairs)
    await load_app(ctx, params.app)
    await ctx.store.set_config(params.app, values)
    return Result(f"Setting config vars of {params.app}: {', '.join(values)}", {"keys": list(values)})


@REGISTRY.command("config:unset", summary="remove environment variables of an app", mutating=True)
async def unset(ctx: Context, params: UnsetParams) -> Result:
    keys = [_check_key(k) for k in params.keys]
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
