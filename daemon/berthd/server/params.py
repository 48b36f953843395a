"""Command parameters: one `msgspec.Struct` per command is the schema for both request forms.

A `Params` subclass says which fields are positional (`positional`, in order; a last `list[str]` field
takes the remaining words), which one takes the words after `--` (`rest`), and which hold secrets
(`secret`: `***` in the log, or `KEY=***` when the field's metavar is `KEY=VALUE`). Every other field is
an option: `--name VALUE`, `--name=VALUE`, a `bool` is a bare flag, a `list` may repeat; `short_flags`
gives some of them dokku's one-letter names (`-t` for `--tail`, `-n N` for `--num N`), and any other
`-x` is refused as an unknown option (a word that starts with a dash goes after `--`). `--help` asks for
the command's usage (`HelpWanted`) instead of running it. The usage text is generated from the same
struct. Both request forms show their arguments through `berthd.server.redaction`.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Union

import msgspec

from berthd.errors import CommandError
from berthd.server.redaction import NO_SECRETS, Scrubber, secret_values, shown

PAIR_METAVAR = "KEY=VALUE"


@dataclass(frozen=True, slots=True)
class Touches:
    """What a request names that the access rules judge: an app, deploy daemons, an account to run as,
    and other apps it names beside the first (`apps:rename OLD NEW`: NEW), each judged as `app` is."""

    app: str | None = None
    daemons: tuple[str, ...] = ()
    user: str | None = None
    other_apps: tuple[str, ...] = ()


AUTO_DAEMON = "auto"  # `--daemon auto`: placed by requirements, among the daemons the caller may use


class Params(msgspec.Struct, forbid_unknown_fields=True):
    positional: ClassVar[tuple[str, ...]] = ()
    rest: ClassVar[str | None] = None
    secret: ClassVar[frozenset[str]] = frozenset()
    metavars: ClassVar[dict[str, str]] = {}
    daemon_fields: ClassVar[tuple[str, ...]] = ("daemon",)  # the fields that name a deploy daemon
    # after this many words, every token (options too) is a word of the last positional field: the
    # arguments of another command, as `access:check COMMAND ARG ...` takes them
    verbatim_after: ClassVar[int | None] = None
    short_flags: ClassVar[dict[str, str]] = {}  # dokku's one-letter options: {"t": "tail"} makes `-t`

    def touches(self) -> Touches:
        """The app (field `app`), deploy daemons (`daemon_fields`) and account (`user`) it names."""
        if not _may_touch(type(self)):
            return NO_TOUCHES  # `ping` and the like: nothing to look at
        app = getattr(self, "app", None)
        daemons = tuple(
            value
            for name in self.daemon_fields
            if isinstance(value := getattr(self, name, None), str) and value != AUTO_DAEMON
        )
        user = getattr(self, "user", None)
        return Touches(
            app if isinstance(app, str) else None, daemons, user if isinstance(user, str) else None
        )


NO_TOUCHES = Touches()


@cache
def _may_touch(cls: type[Params]) -> bool:
    """Has the class a field the access rules judge (an app, a deploy daemon, an account)?"""
    names = {f.name for f in msgspec.structs.fields(cls)}
    return bool(names & {"app", "user", *cls.daemon_fields})


class NoParams(Params):
    pass


class HelpWanted(Params):
    """What `COMMAND --help` binds to: the registry answers it with the command's usage."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    kind: str  # "positional", "variadic", "rest", "flag", "option", "repeat"
    required: bool
    metavar: str
    description: str | None
    secret: bool = False
    short: str | None = None  # its one-letter name (`t` for `-t`), if it has one

    @property
    def pairs(self) -> bool:
        """Its words are `KEY=VALUE`: a secret one is shown as `KEY=***`."""
        return self.metavar == PAIR_METAVAR

    def show(self, value: str) -> str:
        """One word of this field as the log shows it."""
        text: str = shown(value, self.secret, self.pairs)
        return text

    @property
    def display(self) -> str:
        if self.kind in ("positional", "variadic"):
            return self.metavar
        if self.kind == "rest":
            return "-- ARG ..."
        return "--" + self.name.replace("_", "-")

    @property
    def forms(self) -> list[str]:
        """How an option is written: `--num N` and `-n N`."""
        value = f" {self.metavar}" if self.kind in ("option", "repeat") else ""
        written = [f"{self.display}{value}"]
        if self.short:
            written.append(f"-{self.short}{value}")
        return written


@dataclass(slots=True)
class Bound:
    params: Params
    redacted: list[str]
    scrubber: Scrubber = field(default=NO_SECRETS)


def _unwrap(tp: Any) -> tuple[Any, str | None]:
    """The bare type of an annotation and the description of its `msgspec.Meta`, if any."""
    description = None
    if typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        for meta in args[1:]:
            if isinstance(meta, msgspec.Meta) and meta.description:
                description = meta.description
        tp = args[0]
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])[0], description
    return tp, description


@cache
def field_specs(cls: type[Params]) -> tuple[FieldSpec, ...]:
    specs: list[FieldSpec] = []
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    shorts = {name: letter for letter, name in cls.short_flags.items()}
    for name in cls.positional:
        f = fields[name]
        bare, description = _unwrap(f.type)
        variadic = typing.get_origin(bare) is list
        metavar = cls.metavars.get(name, name.upper())
        kind = "variadic" if variadic else "positional"
        specs.append(FieldSpec(name, kind, f.required, metavar, description, name in cls.secret))
    for name, f in fields.items():
        if name in cls.positional:
            continue
        bare, description = _unwrap(f.type)
        if name == cls.rest:
            kind = "rest"
        elif bare is bool:
            kind = "flag"
        elif typing.get_origin(bare) is list:
            kind = "repeat"
        else:
            kind = "option"
        metavar = cls.metavars.get(name, name.upper())
        secret = name in cls.secret
        specs.append(FieldSpec(name, kind, f.required, metavar, description, secret, shorts.get(name)))
    return tuple(specs)


def usage(command: str, cls: type[Params]) -> str:
    return " ".join(usage_parts(command, cls))


def usage_parts(command: str, cls: type[Params]) -> list[str]:
    """The usage's words, each kept whole when it wraps (`[--env KEY=VALUE]` is one)."""
    parts = [command]
    for spec in field_specs(cls):
        if spec.kind == "positional":
            parts.append(spec.metavar if spec.required else f"[{spec.metavar}]")
        elif spec.kind == "variadic":
            parts.append(f"{spec.metavar} ..." if spec.required else f"[{spec.metavar} ...]")
        elif spec.kind in ("flag", "option", "repeat"):
            parts.append(f"[{' | '.join(spec.forms)}]")
    rest = [s for s in field_specs(cls) if s.kind == "rest"]
    if rest:
        parts.append("[-- ARG ...]")
    return parts


def _option_lookup(cls: type[Params]) -> dict[str, FieldSpec]:
    table: dict[str, FieldSpec] = {}
    for spec in field_specs(cls):
        if spec.kind in ("flag", "option", "repeat"):
            table[spec.name] = spec
            table[spec.name.replace("_", "-")] = spec
    return table


SHORT_FLAG = re.compile(r"^-[A-Za-z]\Z")
HELP_FLAG = "--help"


def _long_form(cls: type[Params], command: str, token: str) -> str:
    """`-t` as the option it stands for (`--tail`); an unknown one is refused."""
    name = cls.short_flags.get(token[1:])
    if name is None:
        raise _usage_error(command, cls, f"unknown option {token} (a word that starts with a dash: after --)")
    return "--" + name.replace("_", "-")


def bind_tokens(command: str, cls: type[Params], tokens: list[str]) -> Bound:
    """Words from a request (text or a JSON list) into the command's parameters."""
    specs = field_specs(cls)
    options = _option_lookup(cls)
    values: dict[str, Any] = {}
    redacted: list[str] = []
    words: list[str] = []
    rest_spec = next((s for s in specs if s.kind == "rest"), None)
    index = 0
    while index < len(tokens):
        if cls.verbatim_after is not None and len(words) >= cls.verbatim_after:
            words.extend(tokens[index:])
            break
        token = tokens[index]
        index += 1
        if token == HELP_FLAG:
            return Bound(HelpWanted(), [token])
        if SHORT_FLAG.match(token):
            token = _long_form(cls, command, token)
        if token == "--":
            remaining = tokens[index:]
            if rest_spec is None:
                words.extend(remaining)
            else:
                values[rest_spec.name] = remaining
                redacted.append("--")
                redacted.extend(map(rest_spec.show, remaining))
            break
        if token.startswith("--") and len(token) > 2:
            key, has_value, value = token[2:].partition("=")
            spec = options.get(key)
            if spec is None:
                raise _usage_error(command, cls, f"unknown option --{key}")
            if spec.kind == "flag":
                if has_value:
                    raise _usage_error(command, cls, f"option --{key} takes no value")
                values[spec.name] = True
                redacted.append(token)
                continue
            if not has_value:
                if index >= len(tokens):
                    raise _usage_error(command, cls, f"option --{key} needs a value ({spec.metavar})")
                value = tokens[index]
                index += 1
            if spec.kind == "repeat":
                values.setdefault(spec.name, []).append(value)
            else:
                values[spec.name] = value
            redacted.append(f"--{key}={spec.show(value)}")
            continue
        words.append(token)
    _bind_words(command, cls, specs, words, values, redacted)
    return Bound(_convert(command, cls, values), redacted, _scrubber(specs, values))


def _bind_words(
    command: str,
    cls: type[Params],
    specs: tuple[FieldSpec, ...],
    words: list[str],
    values: dict[str, Any],
    redacted: list[str],
) -> None:
    positional = [s for s in specs if s.kind in ("positional", "variadic")]
    for spec in positional:
        if spec.kind == "variadic":
            values[spec.name] = list(words)
            redacted.extend(map(spec.show, words))
            words = []
            break
        if not words:
            break
        word = words.pop(0)
        values[spec.name] = word
        redacted.append(spec.show(word))
    if words:
        raise _usage_error(command, cls, f"unexpected argument {words[0]!r}")


def _scrubber(specs: tuple[FieldSpec, ...], values: dict[str, Any]) -> Scrubber:
    if not values:
        return NO_SECRETS  # the hot path: `ping` and friends
    found = [secret_values(values[s.name], s.secret, s.pairs) for s in specs if s.name in values]
    return Scrubber(value for values_of in found for value in values_of)


def bind_named(command: str, cls: type[Params], named: dict[str, Any]) -> Bound:
    """A JSON object of named parameters (`{"app": "x", "force": true}`) into the parameters."""
    specs = {s.name: s for s in field_specs(cls)}
    values: dict[str, Any] = {}
    for key, value in named.items():
        name = key.replace("-", "_")
        if name not in specs:
            raise _usage_error(command, cls, f"unknown parameter {key!r}")
        values[name] = value
    redacted = [f"{k}={shown(v, specs[k].secret, specs[k].pairs)!r}" for k, v in values.items()]
    return Bound(_convert(command, cls, values), redacted, _scrubber(tuple(specs.values()), values))


def _convert(command: str, cls: type[Params], values: dict[str, Any]) -> Params:
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise _usage_error(command, cls, _describe(cls, exc)) from None


def _describe(cls: type[Params], exc: msgspec.ValidationError) -> str:
    text = str(exc)
    message, _, path = text.rpartition(" - at `$.")
    if not message:
        if text.startswith("Object missing required field `"):
            name = text.split("`")[1]
            spec = next((s for s in field_specs(cls) if s.name == name), None)
            return f"missing {spec.display if spec else name}"
        return text
    name = path.rstrip("`").split("[")[0].split(".")[0]
    spec = next((s for s in field_specs(cls) if s.name == name), None)
    if spec is None:
        return text
    if spec.description:
        return f"invalid {spec.display}: {spec.description}"
    return f"invalid {spec.display}: {message[0].lower()}{message[1:]}"


def _usage_error(command: str, cls: type[Params], problem: str) -> CommandError:
    return CommandError("invalid_argument", f"{problem}\nUsage: {usage(command, cls)}")


AppName = typing.Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z][a-z0-9-]{0,62}\Z",
        description="lowercase letters, digits and dashes, starting with a letter, at most 63 characters",
    ),
]


def about(text: str) -> msgspec.Meta:
    """A parameter's description: `help COMMAND` shows it, and an invalid value's error says it."""
    return msgspec.Meta(description=text)
