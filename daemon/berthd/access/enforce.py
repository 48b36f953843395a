"""Where the access rules meet a request: what it names, the answer when refused, and whose code it runs.

The dispatcher asks `berthd.access.rules` before a handler runs; this module turns a command and its
parameters into what the rules judge, and a refusal into an answer. Two checks need the app's record:
a command that runs an app's code (or changes what it runs) must run it as the caller, unless a rule
says `run_as_other`; and it must go through a deploy daemon the rule allows. Those run under the global
lock, just before the handler, so nothing changes the app in between.
"""

from __future__ import annotations

import grp
import os
import pwd

import trio

from berthd.access.rules import CallerView, Decision, Request, RuleSet
from berthd.errors import CommandError, forbidden, not_found
from berthd.runners.table import through_daemon
from berthd.server.context import Context
from berthd.server.params import Touches
from berthd.server.peercred import Peer
from berthd.server.registry import REGISTRY, Command


def runs_as(spec: str | None, peer: Peer) -> bool:
    """Would a process of account `spec` (`USER[:GROUP]`; empty: berthd's own) have no rights the caller
    lacks: the caller's uid, and a group that is one of the caller's own?"""
    if account_uid(spec) != peer.uid:
        return False
    group = (spec or "").partition(":")[2]
    if not group:
        return True  # the user's own primary group
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        if not group.isdigit():
            return False
        gid = int(group)
    return gid == peer.gid or gid in peer.groups


def account_uid(spec: str | None) -> int:
    """The uid an account spec (`USER[:GROUP]`, names or ids; empty: berthd's own) runs as; -1 unknown."""
    if not spec:
        return os.geteuid()
    name = spec.partition(":")[0]
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isdigit() else -1


def account_shown(spec: str | None) -> str:
    return spec if spec else f"berthd's own user ({_name_of(os.geteuid())})"


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def caller_account(peer: Peer) -> str | None:
    """The account a new app of this caller runs as: the caller's own (None: berthd's, for root and for
    berthd's own user, which need no switch). A uid the host has no account for is kept as numbers."""
    if peer.is_root or peer.uid == os.geteuid() or peer.uid < 0:
        return None
    if peer.user is None:
        return f"{peer.uid}:{peer.gid}"
    try:
        primary = pwd.getpwnam(peer.user).pw_gid
    except KeyError:
        primary = peer.gid
    return peer.user if primary == peer.gid or peer.group is None else f"{peer.user}:{peer.group}"


DECISIONS_KEPT = 4096  # (caller, command, what it names) decisions remembered per set of rules


def decide(rules: RuleSet, peer: Peer, command: Command, touches: Touches) -> Decision:
    """The rules' decision, remembered for the next identical request of the same caller (a decision
    depends on nothing else; a new set of rules starts with none remembered). One that names an account
    to run as is judged afresh, since it asks the system's accounts."""
    if touches.user is not None:
        return rules.decide(peer, request_of(command, touches, peer))
    key = (peer.uid, peer.user, peer.group_names, command.name, touches)
    decision = rules.decisions.get(key)
    if decision is None:
        decision = rules.decide(peer, request_of(command, touches, peer))
        if len(rules.decisions) >= DECISIONS_KEPT:
            rules.decisions.clear()
        rules.decisions[key] = decision
    return decision


def request_of(command: Command, touches: Touches, peer: Peer) -> Request:
    as_other = None
    if touches.user is not None and not runs_as(touches.user, peer):
        as_other = account_shown(touches.user)
    return Request(command.name, touches.app, touches.daemons, as_other, touches.other_apps)


async def authorize(ctx: Context, command_name: str, touches: Touches) -> None:
    """The rules judged again, for a handler that learns only now what a request touches (an upload's
    app, at its end), as the dispatcher judges what a request names."""
    rules, peer = ctx.services.rules, ctx.peer
    if not rules.active or peer.is_root:
        return
    command = REGISTRY.lookup(command_name)
    assert command is not None
    decision = decide(rules, peer, command, touches)
    if not decision.allowed:
        raise refusal(rules, peer, command, touches.app, decision)
    ctx.access = CallerView(rules, peer, decision)
    await check_app_owner(ctx, command, touches)


def refusal(
    rules: RuleSet, peer: Peer, command: Command, app: str | None, decision: Decision
) -> CommandError:
    """The answer to a refused request. An app the caller may not see is answered as a missing one:
    word for word, whether it exists or not (a command that would make the app is refused plainly)."""
    if app is not None and not command.creates_app and not rules.may_see(peer, app):
        return not_found(f"App {app} does not exist")
    return forbidden(
        f"Forbidden: {decision.why}",
        {"rules": rules.source, "rule": decision.rule.label if decision.rule else None},
    )


def acts_for_owner(command: Command) -> bool:
    """Does the command act as the app's owner would: run or change its code, change anything of it, or
    read what only its owner should (its config values, its output)?"""
    return command.runs_code or command.mutating or command.output_size_only


async def check_app_owner(ctx: Context, command: Command, touches: Touches) -> None:
    """An existing app's code runs as the app's user, through its deploy daemon: a command that acts as
    the app's owner must be the caller's to give, unless the rule lets it act for others."""
    caller = ctx.caller
    if caller.unlimited or not acts_for_owner(command) or touches.app is None:
        return
    record = await ctx.store.get_app(touches.app)
    if record is None:
        return  # made by this command, as the caller
    rule = caller.decision.rule.label if caller.decision and caller.decision.rule else "no rule"
    data = {"rules": caller.rules.source, "rule": rule}
    owner = record.settings.user
    # the system's accounts may be LDAP's: asked off the event loop
    if not caller.may_run_as_other and not await trio.to_thread.run_sync(runs_as, owner, ctx.peer):
        raise forbidden(
            f"Forbidden: {record.name} runs as {account_shown(owner)}, and {rule} lets you act only on apps "
            "that run as you (run_as_other is false)",
            data,
        )
    if command.runs_code and through_daemon(record.source.kind):
        name = record.settings.daemon or record.source.detail.get("daemon")
        if name is None:
            default = await ctx.store.get_default_daemon()
            name = default.name if default else None
        if name is not None and not caller.may_use_daemon(name):
            raise forbidden(f"Forbidden: {rule} does not allow deploy daemon {name}", data)
