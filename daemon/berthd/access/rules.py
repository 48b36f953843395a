"""The access rules: which callers may run which commands, on which apps, through which deploy daemons,
and whether they may have processes run as someone else.

No rule: everyone who can open the socket may do everything (dokku-daemon's model, and a mounted Docker
socket's). Once any rule exists, a caller other than root may do only what a rule allows, and the first
rule that matches the request decides (a rule with `deny = true` refuses what it matches). root (uid 0)
owns the host and is never limited.

A rule matches a request when it names the caller (`users`, `groups`, `uids`; `users = ["*"]` is
everyone), one of its `commands` patterns names the command, one of its `apps` patterns the app (a rule
without `apps` covers every app), each deploy daemon the request uses is one of its `daemons` (a rule
without `daemons` allows none: a deploy daemon is root on its engine), and the request runs code as the
caller, unless the rule says `run_as_other = true`. Patterns are shell-style (`*`, `?`, `[...]`);
`{user}` and `{uid}` stand for the caller's name and uid.

An app is visible to a caller when any allowing rule covers its name. Answers about an app the caller
cannot see are word for word those about a missing one, so names tell nothing about what exists.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import msgspec

from berthd.server.peercred import Peer

PLACEHOLDERS = re.compile(r"\{([^{}]*)\}")
KNOWN_PLACEHOLDERS = frozenset({"user", "uid"})
EVERYONE = "*"
RULE_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*(?:access[ \t]*\.[ \t]*)?rule[ \t]*\]\]", re.MULTILINE)
BOUND_KEPT = 4096  # callers whose own view of the rules is kept compiled
MAX_RULES_FILE = 4 * 1024 * 1024


class RuleSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One `[[access.rule]]` table as written."""

    name: str | None = None
    users: list[str] = msgspec.field(default_factory=list)
    groups: list[str] = msgspec.field(default_factory=list)
    uids: list[int] = msgspec.field(default_factory=list)
    commands: list[str] = msgspec.field(default_factory=list)
    apps: list[str] | None = None
    daemons: list[str] = msgspec.field(default_factory=list)
    run_as_other: bool = False
    deny: bool = False


class AccessSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The `[access]` section: rules given here, or in the TOML file `file` names (as `[[rule]]` tables)."""

    file: str | None = None
    rule: list[RuleSpec] = msgspec.field(default_factory=list)


class RulesFile(msgspec.Struct, forbid_unknown_fields=True):
    rule: list[RuleSpec] = msgspec.field(default_factory=list)


class RulesError(ValueError):
    """The rules cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    spec: RuleSpec
    source: str  # the file the rule was read from
    line: int | None  # the line of its `[[rule]]` header
    commands: frozenset[str]  # the command names it covers
    allowing: str = ""  # why a request it allows is allowed
    label: str = ""  # `rule 2 'developers' (line 14 of /etc/berthd/berthd.toml)`: made once, shown often

    def __post_init__(self) -> None:
        where = f"line {self.line} of {self.source}" if self.line else self.source
        named = f" {self.spec.name!r}" if self.spec.name else ""
        object.__setattr__(self, "label", f"rule {self.index + 1}{named} ({where})")
        object.__setattr__(self, "allowing", f"{self.label} allows it")

    def names(self, peer: Peer) -> bool:
        spec = self.spec
        if EVERYONE in spec.users or (peer.user is not None and peer.user in spec.users):
            return True
        if peer.uid in spec.uids:
            return True
        return any(group in spec.groups for group in peer.group_names)

    def describe(self) -> dict[str, object]:
        data: dict[str, object] = msgspec.to_builtins(self.spec)
        data["rule"] = self.label
        return data


def _expand(pattern: str, peer: Peer) -> str:
    user = peer.user if peer.user is not None else str(peer.uid)
    escaped = {"user": _glob_escape(user), "uid": str(peer.uid)}
    return PLACEHOLDERS.sub(lambda m: escaped[m.group(1)], pattern)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _matcher(patterns: Iterable[str], peer: Peer) -> re.Pattern[str]:
    parts = [fnmatch.translate(_expand(p, peer)) for p in patterns]
    return re.compile("|".join(parts) if parts else r"(?!)")


@dataclass(frozen=True, slots=True)
class BoundRule:
    """A rule as it reads for one caller: its placeholders filled in."""

    rule: Rule
    apps: re.Pattern[str] | None  # None: every app
    daemons: re.Pattern[str]

    def covers_app(self, app: str) -> bool:
        return self.apps is None or self.apps.fullmatch(app) is not None

    def allows_daemon(self, daemon: str) -> bool:
        return self.daemons.fullmatch(daemon) is not None


@dataclass(frozen=True, slots=True)
class Request:
    """What the rules judge of one request."""

    command: str
    app: str | None = None
    daemons: tuple[str, ...] = ()
    as_other: str | None = None  # an account other than the caller's that code would run as
    other_apps: tuple[str, ...] = ()  # more apps it names (`apps:rename OLD NEW`): each must be allowed too


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: Rule | None  # the rule that decided; None: no rules, root, or no rule matched
    why: str
    bound: BoundRule | None = None


@dataclass
class RuleSet:
    rules: tuple[Rule, ...] = ()
    source: str = "the config"
    _bound: dict[tuple[object, ...], tuple[BoundRule, ...]] = field(default_factory=dict)
    decisions: dict[tuple[object, ...], Decision] = field(default_factory=dict)  # see enforce.decide

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def for_peer(self, peer: Peer) -> tuple[BoundRule, ...]:
        """The rules that name this caller, in order, compiled for it."""
        key = (peer.uid, peer.user, peer.group_names)  # all a rule names a caller by
        bound = self._bound.get(key)
        if bound is None:
            bound = tuple(
                BoundRule(
                    rule,
                    None if rule.spec.apps is None else _matcher(rule.spec.apps, peer),
                    _matcher(rule.spec.daemons, peer),
                )
                for rule in self.rules
                if rule.names(peer)
            )
            if len(self._bound) >= BOUND_KEPT:
                self._bound.clear()
            self._bound[key] = bound
        return bound

    def decide(self, peer: Peer, request: Request) -> Decision:
        """The decision on the request's first app; a request that names more apps is allowed only when
        each of them would be, alone (else the refusal of the first one refused)."""
        decision = self._decide_one(peer, request)
        for app in request.other_apps:
            if not decision.allowed:
                break
            other = self._decide_one(peer, replace(request, app=app, other_apps=()))
            if not other.allowed:
                return other
        return decision

    def _decide_one(self, peer: Peer, request: Request) -> Decision:
        if not self.rules:
            return Decision(
                True, None, "no access rules are set: everyone who may open the socket may do everything"
            )
        if peer.is_root:
            return Decision(True, None, "root is never limited by the access rules")
        closest: str | None = None
        for bound in self.for_peer(peer):
            rule = bound.rule
            if request.command not in rule.commands:
                continue
            if request.app is not None and not bound.covers_app(request.app):
                continue
            if rule.spec.deny:
                return Decision(False, rule, f"{rule.label} denies it", bound)
            refused = [d for d in request.daemons if not bound.allows_daemon(d)]
            if refused:
                closest = closest or f"{rule.label} does not allow deploy daemon {refused[0]}"
                continue
            if request.as_other is not None and not rule.spec.run_as_other:
                closest = closest or (
                    f"{rule.label} runs code only as you, not as {request.as_other} (run_as_other is false)"
                )
                continue
            return Decision(True, rule, rule.allowing, bound)
        who = _who(peer)
        if closest:
            return Decision(False, None, closest)
        target = f" on {request.app}" if request.app is not None else ""
        return Decision(
            False, None, f"no access rule of {self.source} lets {who} run {request.command}{target}"
        )

    def may_see(self, peer: Peer, app: str) -> bool:
        if not self.rules or peer.is_root:
            return True
        return any(not b.rule.spec.deny and b.covers_app(app) for b in self.for_peer(peer))

    def describe(self) -> list[dict[str, object]]:
        return [rule.describe() for rule in self.rules]


def _who(peer: Peer) -> str:
    return f"{peer.user} (uid {peer.uid})" if peer.user else f"uid {peer.uid}"


def compile_rules(
    specs: Sequence[RuleSpec], source: str, text: str | None, commands: Iterable[Sequence[str]]
) -> RuleSet:
    """The rules checked and compiled; `commands` gives each command's names (its own, then aliases),
    `text` the file's text (for the line each rule starts at)."""
    lines = rule_lines(text) if text is not None else []
    known = [tuple(names) for names in commands]
    rules = []
    for index, spec in enumerate(specs):
        line = lines[index] if index < len(lines) else None
        where = f"rule {index + 1} ({f'line {line} of ' if line else ''}{source})"
        rules.append(Rule(index, spec, source, line, _check(spec, where, known)))
    return RuleSet(tuple(rules), source)


def _check(spec: RuleSpec, where: str, known: list[tuple[str, ...]]) -> frozenset[str]:
    if not (spec.users or spec.groups or spec.uids):
        raise RulesError(f'{where} names no one: give users, groups or uids (users = ["*"] for everyone)')
    if not spec.commands:
        raise RulesError(f"{where} grants no command: give commands = [...]")
    for pattern in [*(spec.apps or []), *spec.daemons]:
        for name in PLACEHOLDERS.findall(pattern):
            if name not in KNOWN_PLACEHOLDERS:
                raise RulesError(
                    f"{where}: unknown placeholder {{{name}}} in {pattern!r} (known: {{user}}, {{uid}})"
                )
    covered: set[str] = set()
    for pattern in spec.commands:
        matched = {names[0] for names in known if any(fnmatch.fnmatchcase(n, pattern) for n in names)}
        if not matched:
            raise RulesError(f"{where}: command pattern {pattern!r} matches no command")
        covered |= matched
    return frozenset(covered)


def rule_lines(text: str) -> list[int]:
    """The line of each `[[access.rule]]` (or `[[rule]]`) header, in order."""
    return [text.count("\n", 0, m.start()) + 1 for m in RULE_HEADER.finditer(text)]


def line_of_rule(text: str, message: str) -> str:
    """A validation message naming `rule[N]` (msgspec's path), with the rule's line added."""
    found = re.search(r"\brule\[(\d+)\]", message)
    if not found:
        return message
    lines = rule_lines(text)
    index = int(found.group(1))
    return f"{message} (the rule at line {lines[index]})" if index < len(lines) else message


@dataclass(frozen=True, slots=True)
class CallerView:
    """What one caller may see and use, for handlers that list or choose (apps, jobs, deploy daemons)."""

    rules: RuleSet
    peer: Peer
    decision: Decision | None = None  # the decision on the request being run

    @property
    def unlimited(self) -> bool:
        return not self.rules.active or self.peer.is_root

    def may_see(self, app: str) -> bool:
        return self.unlimited or self.rules.may_see(self.peer, app)

    def may_use_daemon(self, daemon: str) -> bool:
        if self.unlimited:
            return True
        bound = self.decision.bound if self.decision is not None else None
        if bound is not None:
            return bound.allows_daemon(daemon)
        return any(not b.rule.spec.deny and b.allows_daemon(daemon) for b in self.rules.for_peer(self.peer))

    @property
    def may_run_as_other(self) -> bool:
        if self.unlimited:
            return True
        return (
            self.decision is not None
            and self.decision.rule is not None
            and self.decision.rule.spec.run_as_other
        )


def load_rules(spec: AccessSpec, config_file: str | None, commands: Iterable[Sequence[str]]) -> RuleSet:
    """The rules of the config's `[access]` section, or of the file it names. A file that others could
    change is refused: whoever may write the rules decides who is root."""
    if spec.file:
        if spec.rule:
            raise RulesError(f"{config_file}: give the rules in [[access.rule]] or in access.file, not both")
        text = _trusted_text(spec.file, "rules file")
        try:
            parsed = msgspec.toml.decode(text, type=RulesFile)
        except msgspec.ValidationError as exc:
            raise RulesError(f"rules file {spec.file}: {line_of_rule(text, str(exc))}") from None
        except msgspec.DecodeError as exc:
            raise RulesError(f"rules file {spec.file}: {exc}") from None
        return compile_rules(parsed.rule, spec.file, text, commands)
    if not spec.rule:
        return RuleSet()
    assert config_file is not None  # rules come from a file
    return compile_rules(spec.rule, config_file, _trusted_text(config_file, "config file"), commands)


def _trusted_text(path: str, what: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise RulesError(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
            raise RulesError(
                f"{what} {path} holds access rules but others may change it: make it owned by root "
                "(or berthd's user) and writable by its owner only"
            )
        data = file.read(MAX_RULES_FILE + 1)
        if len(data) > MAX_RULES_FILE:
            raise RulesError(f"{what} {path} is larger than {MAX_RULES_FILE} bytes")
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise RulesError(f"{what} {path}: {exc}") from None
