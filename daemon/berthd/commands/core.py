"""help, TOPIC:help, commands, version, ping."""

from __future__ import annotations

from berthd import __version__
from berthd.server.context import Context
from berthd.server.params import NoParams
from berthd.server.registry import REGISTRY, Result


@REGISTRY.command("help", summary="all commands with their usage", mutating=False)
async def help_(ctx: Context, params: NoParams) -> Result:
    return REGISTRY.help()


@REGISTRY.command("commands", summary="the names of all commands, one a line", mutating=False)
async def commands(ctx: Context, params: NoParams) -> Result:
    names = REGISTRY.names()
    return Result("\n".join(names), names)


@REGISTRY.command("version", summary="berthd's version", mutating=False)
async def version(ctx: Context, params: NoParams) -> Result:
    return Result(f"Version {__version__}", {"version": __version__})


@REGISTRY.command("ping", summary="answers pong", mutating=False)
async def ping(ctx: Context, params: NoParams) -> Result:
    return Result("pong")
