"""system:capabilities: what this host offers, from the capability probe's cache."""

from __future__ import annotations

import msgspec

from berthd.host.capabilities import summary
from berthd.server.context import Context
from berthd.server.params import NoParams
from berthd.server.registry import REGISTRY, Result


@REGISTRY.command(
    "system:capabilities",
    summary="this host's platform, CPU, memory, disk, GPUs, Docker and Python",
    mutating=False,
)
async def capabilities(ctx: Context, params: NoParams) -> Result:
    # The cache is refreshed in the background: this never waits on NVML or the Docker engine.
    report = await ctx.services.capabilities.current()
    return Result(summary(report.capabilities, report.notes), msgspec.to_builtins(report.capabilities))
