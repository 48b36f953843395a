"""help, TOPIC:help, commands, version, ping."""

from __future__ import annotations

from berthd import __version__
from berthd.server.context import Context
from berthd.server.params import NoParams
from berthd.server.registry import REGISTRY, Command, Registry, Result


def _help_lines(commands: list[Command]) -> list[str]:
    width = max(len(c.usage) for c in commands)
    return [f"    {c.usage.ljust(width)}  {c.summary}" for c in commands]


def topic_help(registry: Registry, topic: str) -> Result:
    commands = [c for c in registry if c.topic == topic]
    lines = [f"Usage: {topic}:COMMAND", "", f"Commands of {topic}:", *_help_lines(commands)]
    return Result(
        "\n".join(lines),
        [{"command": c.name, "usage": c.usage, "summary": c.summary} for c in commands],
    )


@REGISTRY.command("help", summary="all commands with their usage", mutating=False)
async def help_(ctx: Context, params: NoParams) -> Result:
    registry = ctx.services.registry
    lines = ["Usage: COMMAND [ARG ...]   (one command a line; answers are JSON lines)", ""]
    data = []
    for topic in registry.topics():
        commands = [c for c in registry if c.topic == topic]
        lines += [f"{topic}:", *_help_lines(commands), ""]
        data += [{"command": c.name, "usage": c.usage, "summary": c.summary} for c in commands]
    return Result("\n".join(lines).rstrip("\n"), data)


@REGISTRY.command("commands", summary="the names of all commands, one a line", mutating=False)
async def commands(ctx: Context, params: NoParams) -> Result:
    names = ctx.services.registry.names()
    return Result("\n".join(names), names)


@REGISTRY.command("version", summary="berthd's version", mutating=False)
async def version(ctx: Context, params: NoParams) -> Result:
    return Result(f"Version {__version__}", {"version": __version__})


@REGISTRY.command("ping", summary="answers pong", mutating=False)
async def ping(ctx: Context, params: NoParams) -> Result:
    return Result("pong")
