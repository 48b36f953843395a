"""git:from-image: an app from a Docker image, deployed through a deploy daemon (placed by its requirements)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from berthd.commands.apps import app_for_source, settings_for
from berthd.commands.sources import SourceOptions, apply_options, go_live
from berthd.deploy.placement import place
from berthd.errors import CommandError, daemon_unavailable, forbidden, invalid_argument, not_found
from berthd.runners import RunnerError
from berthd.server.context import Context
from berthd.server.params import AppName, about
from berthd.server.registry import REGISTRY, Result
from berthd.store.records import AppSettings, AppSource, DaemonRecord

IMAGE = re.compile(
    # a registry host is only a first part with a dot or a port, or localhost (Docker's own rule)
    r"^(?:(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+(?::[0-9]+)?|localhost(?::[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+)/)?"
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?\Z"
)


class FromImageParams(SourceOptions, kw_only=True):
    app: AppName
    image: Annotated[str, about("a Docker image reference (name[:tag][@sha256:...])")]
    heartbeat: Annotated[bool, about("the ExApp answers AppAPI's /heartbeat: wait for it")] = False
    positional = ("app", "image")


COMMAND = "git:from-image"


@REGISTRY.command(
    COMMAND,
    summary="a Docker image, deployed through the app's daemon",
    mutating=True,
    creates_app=True,
    runs_code=True,
)
async def from_image(ctx: Context, params: FromImageParams) -> Result:
    if len(params.image) > 255 or not IMAGE.match(params.image):
        raise invalid_argument(f"invalid image reference {params.image!r}")
    existing = await ctx.store.get_app(params.app)
    settings, _ = apply_options(settings_for(ctx, existing), params)  # refused now, before any engine
    ctx.release_lock()  # the engines are asked next: never while holding every other command up
    daemon, placement = await _choose_daemon(ctx, params.app, settings)
    runner = ctx.processes.daemon_runner(daemon)
    if runner.features.engine:
        status = await runner.check(daemon)
        if not status.reachable:
            raise daemon_unavailable(daemon.name, status.why or "unknown")
        try:
            await runner.check_image(daemon, params.image)
        except RunnerError as exc:
            raise CommandError(
                "unavailable", str(exc), {"daemon": daemon.name, "image": params.image}
            ) from None
    detail = {"image": params.image, "daemon": daemon.name}
    if placement:
        detail["placement"] = placement
    if params.heartbeat:
        detail["heartbeat"] = "true"
    async with ctx.services.lock.held():
        existing = await ctx.store.get_app(params.app)
        settings, env = apply_options(settings_for(ctx, existing), params)
        settings = msgspec.structs.replace(settings, daemon=daemon.name)
        _, created = await app_for_source(ctx, params.app)
        detail = await go_live(ctx, params.app, AppSource("image", detail), settings, env, start=False)
    verb = "Creating" if created else "Updating"
    runs = detail["status"] == "running"
    started = f"{params.app} runs the new image" if runs else f"Start it with: ps:start {params.app}"
    return Result(
        f"{verb} {params.app} from image {params.image} on {daemon.name}... done\n{started}",
        {"app": params.app, "image": params.image, "daemon": daemon.name, "running": runs},
    )


async def _choose_daemon(ctx: Context, app: str, settings: AppSettings) -> tuple[DaemonRecord, str | None]:
    """The app's deploy daemon (`--daemon`, else its own, else the default), or the one its requirements
    place it on (among those the caller may use)."""
    name = None if settings.daemon == "auto" else settings.daemon
    if settings.requirements and name is None:
        daemons = [
            d
            for d in await ctx.store.list_daemons()
            if ctx.processes.daemon_runner(d).features.fingerprint and ctx.caller.may_use_daemon(d.name)
        ]

        async def fingerprint(daemon: DaemonRecord) -> dict[str, Any]:
            return await ctx.processes.daemon_runner(daemon).fingerprint(daemon)

        return await place(app, settings.requirements, daemons, fingerprint)
    found = await (ctx.store.get_daemon(name) if name else ctx.store.get_default_daemon())
    if found is None:
        raise not_found(
            f"no deploy daemon {name!r}" if name else "no default deploy daemon: register one first"
        )
    if not ctx.caller.may_use_daemon(found.name):  # the default one (a named one was judged already)
        raise forbidden("Forbidden: the access rules do not let you use the default deploy daemon")
    return found, None
