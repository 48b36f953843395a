"""git:from-image: an app from a Docker image, deployed through a deploy daemon (placed by its requirements)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from berthd.commands.apps import app_for_source, settings_for
from berthd.commands.sources import SourceOptions, apply_options
from berthd.deploy.placement import place
from berthd.errors import forbidden, invalid_argument, not_found
from berthd.server.context import Context
from berthd.server.params import AppName
from berthd.server.registry import REGISTRY, Result
from berthd.store.records import AppSource, DaemonRecord

IMAGE = re.compile(
    # a registry host is only a first part with a dot or a port, or localhost (Docker's own rule)
    r"^(?:(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+(?::[0-9]+)?|localhost(?::[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+)/)?"
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


class FromImageParams(SourceOptions, kw_only=True):
    app: AppName
    image: str
    heartbeat: bool = False
    positional = ("app", "image")


@REGISTRY.command(
    "git:from-image",
    summary="a Docker image, deployed through the app's daemon",
    mutating=True,
    creates_app=True,
    runs_code=True,
)
async def from_image(ctx: Context, params: FromImageParams) -> Result:
    if len(params.image) > 255 or not IMAGE.match(params.image):
        raise invalid_argument(f"invalid image reference {params.image!r}")
    existing = await ctx.store.get_app(params.app)
    settings, env = apply_options(settings_for(ctx, existing), params)
    name = None if settings.daemon == "auto" else settings.daemon
    placement = None
    if settings.requirements and name is None:
        daemons = [
            d
            for d in await ctx.store.list_daemons()
            if ctx.processes.daemon_runner(d).features.fingerprint and ctx.caller.may_use_daemon(d.name)
        ]

        async def fingerprint(daemon: DaemonRecord) -> dict[str, Any]:
            return await ctx.processes.daemon_runner(daemon).fingerprint(daemon)

        daemon, placement = await place(params.app, settings.requirements, daemons, fingerprint)
    else:
        found = await (ctx.store.get_daemon(name) if name else ctx.store.get_default_daemon())
        if found is None:
            raise not_found(
                f"no deploy daemon {name!r}" if name else "no default deploy daemon: register one first"
            )
        daemon = found
        if not ctx.caller.may_use_daemon(daemon.name):  # the default one (a named one was judged already)
            raise forbidden(f"Forbidden: the access rules do not let you use deploy daemon {daemon.name}")
    record, created = await app_for_source(ctx, params.app)
    detail = {"image": params.image, "daemon": daemon.name, "status": "ready"}
    if placement:
        detail["placement"] = placement
    if params.heartbeat:
        detail["heartbeat"] = "true"
    settings = msgspec.structs.replace(settings, daemon=daemon.name)
    await ctx.store.save_source(params.app, AppSource("image", detail), settings)
    if env:
        await ctx.store.set_config(params.app, env)
    verb = "Creating" if created else "Updating"
    return Result(
        f"{verb} {params.app} from image {params.image} on {daemon.name}... done",
        {"app": params.app, "image": params.image, "daemon": daemon.name},
    )
