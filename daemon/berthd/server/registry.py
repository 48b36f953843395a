"""The command registry: every command berthd answers, with its parameters and how it runs.

`help`, `help COMMAND`, `COMMAND --help`, `TOPIC:help` and `commands` are generated from it; the
dispatcher looks names up in it and nowhere else. Help text wraps at `HELP_WIDTH` columns, each line
after the first of an entry indented under it.
"""

from __future__ import annotations

import textwrap
import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from berthd.server.context import Context
from berthd.server.params import FieldSpec, HelpWanted, Params, field_specs, usage, usage_parts

HELP_WIDTH = 100


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

            async def answer(ctx: Context, params: Any) -> Result:
                if isinstance(params, HelpWanted):  # `COMMAND --help`: its usage, not a run
                    return self.command_help(name)
                return await handler(ctx, params)

            cmd = Command(
                name,
                answer,
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

    def command_help(self, name: str) -> Result:
        """`help COMMAND`, `COMMAND --help`: its usage, what it does, each argument and option described."""
        command = self._names[name]
        specs = field_specs(command.params)
        arguments = [s for s in specs if s.kind in ("positional", "variadic", "rest")]
        options = [s for s in specs if s.kind in ("flag", "option", "repeat")]
        lines = [*_wrapped("Usage: ", usage_parts(command.name, command.params), 4), "", command.summary]
        if command.aliases:
            lines.append(f"Also answers to: {', '.join(command.aliases)}")
        argument_rows = [_field(s, [s.display]) for s in arguments]
        option_rows = [_field(s, s.forms) for s in options]
        for title, rows in (("Arguments:", argument_rows), ("Options:", option_rows)):
            if rows:
                lines += ["", title, *_described_rows(rows)]
        described = {
            "command": command.name,
            "usage": command.usage,
            "summary": command.summary,
            "aliases": list(command.aliases),
            "arguments": argument_rows,
            "options": option_rows,
        }
        return Result("\n".join(lines), described)

    def names(self) -> list[str]:
        topic_help = [f"{t}:help" for t in self.topics() if t != "core"]
        return sorted([*self._names, *topic_help])


def _help_lines(commands: list[Command]) -> list[str]:
    """One entry a command: its usage and summary, wrapped (never padded to the longest usage)."""
    lines: list[str] = []
    for command in commands:
        words = usage_parts(command.name, command.params)
        one_line = _wrapped("    ", [*words, "", *command.summary.split()], 8)
        if len(one_line) == 1:
            lines += one_line
        else:  # a long usage: the summary under it, on its own
            lines += _wrapped("    ", words, 8) + _wrapped(" " * 8, command.summary.split(), 8)
    return lines


def _wrapped(first: str, words: list[str], indent: int) -> list[str]:
    """Words (each kept whole; an empty one is a wider gap) filled to HELP_WIDTH columns."""
    glue = "\N{NO-BREAK SPACE}"
    text = " ".join(word.replace(" ", glue) for word in words)
    filled = textwrap.wrap(
        text,
        HELP_WIDTH,
        initial_indent=first,
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [line.replace(glue, " ") for line in filled]


def _field(spec: FieldSpec, forms: list[str]) -> dict[str, str | None]:
    return {"name": ", ".join(forms), "description": spec.description}


def _described_rows(rows: list[dict[str, str | None]]) -> list[str]:
    """`  --num N, -n N  a number of lines ...`: a name too long for the column gets its own line."""
    column = min(max(len(str(row["name"])) for row in rows), 28) + 4
    lines: list[str] = []
    for row in rows:
        name, description = f"  {row['name']}", row["description"] or ""
        if len(name) + 2 > column or not description:
            lines.append(name)
            if description:
                lines += textwrap.wrap(description, HELP_WIDTH, initial_indent=" " * column,
                                       subsequent_indent=" " * column)  # fmt: skip
            continue
        lines += textwrap.wrap(
            f"{name.ljust(column)}{description}", HELP_WIDTH, subsequent_indent=" " * column
        )
    return lines


def _described(command: Command) -> dict[str, str]:
    return {"command": command.name, "usage": command.usage, "summary": command.summary}


REGISTRY = Registry()
