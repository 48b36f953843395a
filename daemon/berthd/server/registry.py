"""The command registry: every command berthd answers, with its parameters and how it runs.

`help`, `TOPIC:help` and `commands` are generated from it; the dispatcher looks names up in it and
nowhere else.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from berthd.server.context import Context
from berthd.server.params import Params, usage


@dataclass(frozen=True, slots=True)
class Result:
    output: str = ""
    data: Any = None


Handler = Callable[[Context, Any], Awaitable[Result]]
H = TypeVar("H", bound=Callable[..., Awaitable[Result]])


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    handler: Handler
    params: type[Params]
    summary: str
    mutating: bool
    streaming: bool = False
    secret_output: bool = False  # the answer holds secrets (config values)
    app_output: bool = False  # the answer holds an app's own output (its logs)
    aliases: tuple[str, ...] = ()
    creates_app: bool = False  # makes its app when it does not exist
    runs_code: bool = False  # runs, builds or changes what an app runs (its code, settings, environment)

    @property
    def output_size_only(self) -> bool:
        """The log records the size of a successful answer's output, not its text."""
        return self.secret_output or self.app_output

    @property
    def topic(self) -> str:
        return self.name.split(":", 1)[0] if ":" in self.name else "core"

    @property
    def usage(self) -> str:
        return usage(self.name, self.params)


class Registry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._names: dict[str, Command] = {}

    def command(
        self,
        name: str,
        *,
        summary: str,
        mutating: bool,
        streaming: bool = False,
        secret_output: bool = False,
        app_output: bool = False,
        aliases: tuple[str, ...] = (),
        creates_app: bool = False,
        runs_code: bool = False,
    ) -> Callable[[H], H]:
        """Register a handler `async def f(ctx: Context, params: SomeParams) -> Result`."""

        def register(handler: H) -> H:
            hints = typing.get_type_hints(handler)
            params_type = hints.get("params")
            if not (isinstance(params_type, type) and issubclass(params_type, Params)):
                raise TypeError(f"handler for {name} needs a `params: <Params subclass>` argument")
            cmd = Command(
                name,
                handler,
                params_type,
                summary,
                mutating,
                streaming,
                secret_output,
                app_output,
                aliases,
                creates_app,
                runs_code,
            )
            for key in (name, *aliases):
                if key in self._names:
                    raise ValueError(f"command {key} registered twice")
                self._names[key] = cmd
            self._commands[name] = cmd
            return handler

        return register

    def lookup(self, name: str) -> Command | None:
        return self._names.get(name)

    def topics(self) -> list[str]:
        return sorted({c.topic for c in self._commands.values()})

    def topic_help_name(self, name: str) -> str | None:
        """`apps:help` names the topic `apps`; anything else is not a topic help request."""
        topic, sep, tail = name.partition(":")
        if sep and tail == "help" and topic in self.topics() and topic != "core":
            return topic
        return None

    def __iter__(self) -> Iterator[Command]:
        return iter(sorted(self._commands.values(), key=lambda c: c.name))

    def help(self) -> Result:
        """`help`: every command with its usage, by topic."""
        lines = ["Usage: COMMAND [ARG ...]   (one command a line; answers are JSON lines)", ""]
        data = []
        for topic in self.topics():
            commands = [c for c in self if c.topic == topic]
            lines += [f"{topic}:", *_help_lines(commands), ""]
            data += [_described(c) for c in commands]
        return Result("\n".join(lines).rstrip("\n"), data)

    def topic_help(self, topic: str) -> Result:
        """`TOPIC:help`: one topic's commands."""
        commands = [c for c in self if c.topic == topic]
        lines = [f"Usage: {topic}:COMMAND", "", f"Commands of {topic}:", *_help_lines(commands)]
        return Result("\n".join(lines), [_described(c) for c in commands])

    def names(self) -> list[str]:
        topic_help = [f"{t}:help" for t in self.topics() if t != "core"]
        return sorted([*self._names, *topic_help])


def _help_lines(commands: list[Command]) -> list[str]:
    width = max(len(c.usage) for c in commands)
    return [f"    {c.usage.ljust(width)}  {c.summary}" for c in commands]


def _described(command: Command) -> dict[str, str]:
    return {"command": command.name, "usage": command.usage, "summary": command.summary}


REGISTRY = Registry()
