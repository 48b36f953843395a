"""metrics: berthd's counts as the OpenMetrics text format (the page `--metrics-listen` serves too)."""

from __future__ import annotations

from berthd.server.context import Context
from berthd.server.exposition import render
from berthd.server.params import NoParams
from berthd.server.registry import REGISTRY, Result


@REGISTRY.command(
    "metrics",
    summary="berthd's counts in the OpenMetrics text format (commands, latency, lock, connections, processes)",
    mutating=False,
)
async def metrics(ctx: Context, params: NoParams) -> Result:
    return Result(render(ctx.services.metrics, ctx.services.processes))
