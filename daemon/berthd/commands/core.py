"""help, help COMMAND, TOPIC:help, commands, version, ping."""

from __future__ import annotations

from typing import Annotated

import msgspec

from berthd import __version__
from berthd.errors import invalid_argument
from berthd.server.context import Context
from berthd.server.params import NoParams, Params
from berthd.server.registry import REGISTRY, Result


class HelpParams(Params):
    command: Annotated[
        str | None, msgspec.Meta(description="a command (its usage and options) or a topic (its commands)")
    ] = None
    positional = ("command",)


@REGISTRY.command(
    "help", summary="all commands with their usage; one command's, or one topic's", mutating=False
)
async def help_(ctx: Context, params: HelpParams) -> Result:
    if params.command is None:
        return REGISTRY.help()
    if REGISTRY.lookup(params.command) is not None:
        return REGISTRY.command_help(params.command)
    topic = params.command.removesuffix(":help")
    if topic in REGISTRY.topics() and topic != "core":
        return REGISTRY.topic_help(topic)
    raise invalid_argument(f"no command {params.command!r}: `commands` lists them all")


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
