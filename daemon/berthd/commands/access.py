"""whoami, access:check, access:rules: the caller as berthd sees it, and what the access rules let it do."""

from __future__ import annotations

from typing import Annotated

from berthd.access import enforce
from berthd.access.rules import CallerView
from berthd.commands.images import COMMAND as IMAGE_COMMAND
from berthd.errors import CommandError, forbidden, invalid_argument
from berthd.server.context import Context
from berthd.server.params import NoParams, Params, about, bind_tokens
from berthd.server.registry import REGISTRY, Result


class CheckParams(Params):
    command: Annotated[str, about("a command name")]
    args: Annotated[list[str], about("its arguments, as they would be given")]
    positional = ("command", "args")
    verbatim_after = 1
    secret = frozenset({"args"})  # another command's arguments may hold its secrets
    metavars = {"args": "ARG"}


@REGISTRY.command(
    "whoami", summary="the caller as berthd sees it: uid, gid, pid, user, groups", mutating=False
)
async def whoami(ctx: Context, params: NoParams) -> Result:
    peer = ctx.peer
    data = peer.describe()
    rules = ctx.services.rules
    if not rules.active:
        data["access"] = "unlimited: no access rules are set"
    elif peer.is_root:
        data["access"] = "unlimited: root"
    else:
        data["access"] = "limited by the access rules"
        data["rules"] = [b.rule.label for b in rules.for_peer(peer)]
    user = peer.user if peer.user is not None else "(no account on this host)"
    groups = ", ".join(peer.group_names) or "-"
    lines = [
        f"{user} uid={peer.uid} gid={peer.gid} pid={peer.pid}",
        f"groups: {groups}",
        f"access: {data['access']}",
    ]
    return Result("\n".join(lines), data)


@REGISTRY.command("access:check", summary="may I run COMMAND ARG ..., and which rule decides", mutating=False)
async def check(ctx: Context, params: CheckParams) -> Result:
    command = REGISTRY.lookup(params.command)
    if command is None:
        raise invalid_argument(f"no command {params.command!r}")
    try:
        bound = bind_tokens(command.name, command.params, params.args)
    except CommandError as exc:
        raise invalid_argument(f"{command.name} would not run: {exc.message}") from None
    touches = bound.params.touches()
    rules, peer = ctx.services.rules, ctx.peer
    decision = rules.decide(peer, enforce.request_of(command, touches, peer))
    allowed, why = decision.allowed, decision.why
    view = CallerView(rules, peer, decision)
    if not allowed and touches.app is not None:
        refusal = enforce.refusal(rules, peer, command, touches.app, decision)
        if refusal.code == "not_found":
            why = refusal.message  # what running it would answer: nothing about other apps
    if allowed and touches.app is not None:
        probe = Context(ctx.services, peer, access=view)
        try:
            await enforce.check_app_owner(probe, command, touches)
        except CommandError as exc:
            allowed, why = False, exc.message.removeprefix("Forbidden: ")
    if allowed and command.name == IMAGE_COMMAND and not touches.daemons and not view.unlimited:
        # the one command that may go through the default daemon without naming it: judged as it would be
        default = await ctx.store.get_default_daemon()
        existing = await ctx.store.get_app(touches.app) if touches.app else None
        named = existing is not None and existing.settings.daemon
        if not named and default is not None and not view.may_use_daemon(default.name):
            allowed, why = False, "the access rules do not let you use the default deploy daemon"
    rule = decision.rule.label if decision.rule else None
    verdict = "allowed" if allowed else "denied"
    return Result(
        f"{command.name}: {verdict}: {why}",
        {"command": command.name, "allowed": allowed, "rule": rule, "why": why},
    )


@REGISTRY.command("access:rules", summary="the access rules in force, in order (root)", mutating=False)
async def rules_(ctx: Context, params: NoParams) -> Result:
    if not ctx.peer.is_root:
        raise forbidden("Forbidden: only root may read the access rules")
    rules = ctx.services.rules
    if not rules.active:
        return Result("No access rules: everyone who may open the socket may do everything.", [])
    lines = []
    for rule in rules.rules:
        spec = rule.spec
        who = [*spec.users, *(f"@{g}" for g in spec.groups), *(f"uid {u}" for u in spec.uids)]
        verb = "deny" if spec.deny else "allow"
        apps = ", ".join(spec.apps) if spec.apps is not None else "every app"
        extra = f"; daemons {', '.join(spec.daemons)}" if spec.daemons else ""
        other = "; may run as others" if spec.run_as_other else ""
        lines.append(
            f"{rule.label}: {verb} {', '.join(who)}: {', '.join(spec.commands)} on {apps}{extra}{other}"
        )
    return Result("\n".join(lines), rules.describe())
