"""How code reaches an app. The options every source command shares, and `apps:from-local`."""

from __future__ import annotations

import msgspec
import trio

from berthd.apps.launch import sanitise_args
from berthd.apps.settings import (
    check_cwd,
    check_executable,
    check_mount,
    check_restart_policy,
    check_timeout,
    check_user,
)
from berthd.commands.config import parse_pairs
from berthd.errors import CommandError
from berthd.host.requirements import incompatible, parse_requirement_pair, unmet
from berthd.server.context import Context
from berthd.server.params import AppName, Params
from berthd.server.registry import REGISTRY, Result
from berthd.store.records import AppRecord, AppSettings, AppSource


class SourceOptions(Params):
    """`--cwd --env --timeout --user --description --require --mount --restart-policy --daemon -- ARG ...`"""

    cwd: str | None = None
    env: list[str] = msgspec.field(default_factory=list)
    timeout: int | None = None
    user: str | None = None
    description: str | None = None
    require: list[str] = msgspec.field(default_factory=list)
    mount: list[str] = msgspec.field(default_factory=list)
    restart_policy: str | None = None
    daemon: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    rest = "args"
    secret = frozenset({"env"})  # environment values are often credentials: logged as KEY=***
    metavars = {
        "env": "KEY=VALUE",
        "require": "KEY=VALUE",
        "mount": "PATH:INPUT|OUTPUT",
        "timeout": "SECONDS",
    }


def apply_options(settings: AppSettings, options: SourceOptions) -> tuple[AppSettings, dict[str, str]]:
    """The options checked and folded into the settings; the environment to add to the app's config."""
    changes: dict[str, object] = {}
    if options.cwd is not None:
        changes["cwd"] = check_cwd(options.cwd)
    if options.timeout is not None:
        changes["timeout"] = check_timeout(options.timeout)
    if options.user is not None:
        changes["user"] = check_user(options.user)
    if options.description is not None:
        changes["description"] = options.description
    if options.restart_policy is not None:
        changes["restart_policy"] = check_restart_policy(options.restart_policy)
    if options.daemon is not None:
        changes["daemon"] = options.daemon
    if options.mount:
        changes["mounts"] = [check_mount(m) for m in options.mount]
    if options.require:
        changes["requirements"] = dict(parse_requirement_pair(pair) for pair in options.require)
    if options.args:
        changes["args"] = sanitise_args(options.args)
    return msgspec.structs.replace(settings, **changes), parse_pairs(options.env)


async def ensure_compatible(
    ctx: Context, name: str, requirements: dict[str, str], image: bool = False
) -> None:
    """Refuse (`incompatible`, every unmet requirement named) an app this host cannot run.
    Image apps are judged by their daemon's engine when they are placed, not by this host."""
    if not requirements or image:
        return
    report = await ctx.services.capabilities.current()
    problems = unmet(requirements, report.capabilities)
    if problems:
        raise incompatible(name, problems)


async def app_for_source(ctx: Context, name: str) -> tuple[AppRecord, bool]:
    """The app, created when it does not exist yet (and whether it was)."""
    record = await ctx.store.get_app(name)
    if record is not None:
        return record, False
    return await ctx.store.create_app(name), True


async def save_source(
    ctx: Context, record: AppRecord, source: AppSource, settings: AppSettings, env: dict[str, str]
) -> None:
    await ctx.store.save_source(record.name, source, settings)
    if env:
        await ctx.store.set_config(record.name, env)


class FromLocalParams(SourceOptions, kw_only=True):
    app: AppName
    executable: str
    positional = ("app", "executable")


@REGISTRY.command("apps:from-local", summary="run an executable already on this host", mutating=True)
async def from_local(ctx: Context, params: FromLocalParams) -> Result:
    executable = await trio.to_thread.run_sync(check_executable, params.executable)
    existing = await ctx.store.get_app(params.app)
    base = existing.settings if existing else AppSettings()
    settings, env = apply_options(msgspec.structs.replace(base, executable=executable), params)
    await ensure_compatible(ctx, params.app, settings.requirements)
    record, created = await app_for_source(ctx, params.app)
    try:
        await save_source(ctx, record, AppSource("local", {"executable": executable}), settings, env)
    except CommandError:
        if created:
            await ctx.store.delete_app(params.app)
        raise
    verb = "Creating" if created else "Updating"
    return Result(
        f"{verb} {params.app} from {executable}... done", {"app": params.app, "executable": executable}
    )
