"""Where the access rules meet a request: what it names, the answer when refused, and whose code it runs.

The dispatcher asks `berthd.access.rules` before a handler runs; this module turns a command and its
parameters into what the rules judge, and a refusal into an answer. Two checks need the app's record:
a command that runs an app's code (or changes what it runs) must run it as the caller, unless a rule
says `run_as_other`; and it must go through a deploy daemon the rule allows. Those run under the global
lock, just before the handler, so nothing changes the app in between.
"""

from __future__ import annotations

import os
import pwd

from berthd.access.rules import Decision, Request, RuleSet
from berthd.errors import CommandError, forbidden, not_found
from berthd.runners.table import through_daemon
from berthd.server.context import Context
from berthd.server.params import Touches
from berthd.server.peercred import Peer
from berthd.server.registry import Command


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


def request_of(command: Command, touches: Touches, peer: Peer) -> Request:
    as_other = None
    if touches.user is not None and account_uid(touches.user) != peer.uid:
        as_other = account_shown(touches.user)
    return Request(command.name, touches.app, touches.daemons, as_other)


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


async def check_app_owner(ctx: Context, command: Command, touches: Touches) -> None:
    """A command that runs an existing app's code runs it as the app's user, and through the app's deploy
    daemon: both must be the caller's to use."""
    caller = ctx.caller
    if caller.unlimited or not command.runs_code or touches.app is None:
        return
    record = await ctx.store.get_app(touches.app)
    if record is None:
        return  # made by this command, as the caller
    rule = caller.decision.rule.label if caller.decision and caller.decision.rule else "no rule"
    data = {"rules": caller.rules.source, "rule": rule}
    owner = record.settings.user
    if account_uid(owner) != ctx.peer.uid and not caller.may_run_as_other:
        raise forbidden(
            f"Forbidden: {record.name} runs as {account_shown(owner)}, and {rule} lets you run code only "
            "as yourself (run_as_other is false)",
            data,
        )
    if through_daemon(record.source.kind):
        name = record.settings.daemon or record.source.detail.get("daemon")
        if name is None:
            default = await ctx.store.get_default_daemon()
            name = default.name if default else None
        if name is not None and not caller.may_use_daemon(name):
            raise forbidden(f"Forbidden: {rule} does not allow deploy daemon {name}", data)
