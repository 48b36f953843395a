"""ps:start, ps:stop, ps:restart, ps:scale, ps:set, ps:report, ps:rebuild: the app's supervised processes.

`ps:rebuild` is dokku's: the app built again from the source it has and its processes replaced if they
run. A git app's recorded commit is checked out and built again; an archive's live release (what the
archive gave: it has no build, and its URL is kept without its credentials) is started anew; an image
app's container is made anew (the image pulled when the engine lacks it, the data volume kept); an
executable on this host has nothing to build, and is restarted.
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated

import msgspec
import trio

from berth.messages import ProgressEvent
from berthd.apps.settings import check_restart_policy
from berthd.commands import git
from berthd.commands.apps import AppParams, SetParams, load_app
from berthd.commands.sources import check_host_meets
from berthd.errors import CommandError, invalid_argument
from berthd.runners import RunnerError
from berthd.runners.table import through_daemon
from berthd.server.context import Context
from berthd.server.params import AppName, Params, about
from berthd.server.registry import REGISTRY, Result
from berthd.store.records import AppRecord
from berthd.supervision.manager import RUNNING
from berthd.supervision.supervisor import RestartPolicy, State

START_WAIT = 3.0  # how long ps:start waits to see each process leave STARTING
SCALE_PAIR = re.compile(r"^(?P<type>[A-Za-z0-9][A-Za-z0-9_-]{0,62})=(?P<count>-?[0-9]+)\Z")
MAX_SCALE = 100
MAX_STAGE = 200  # characters of a progress stage: the engine's text, held in a bounded channel


class ReportParams(Params):
    app: AppName | None = None
    positional = ("app",)


class ScaleParams(Params):
    app: AppName
    counts: Annotated[list[str], about("how many processes of a Procfile type (web=2)")]
    positional = ("app", "counts")
    metavars = {"counts": "TYPE=N"}


async def _prepare(ctx: Context, record: AppRecord) -> None:
    """What the runner needs before any process exists (an image pulled), with progress events."""
    runner, target = await ctx.processes.runner_for(record)
    if not runner.features.image_pull:
        return
    token = trio.lowlevel.current_trio_token()
    events: trio.MemorySendChannel[ProgressEvent]
    events, received = trio.open_memory_channel[ProgressEvent](256)

    def progress(stage: str, done: int | None, total: int | None) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.RunFinishedError):
            token.run_sync_soon(lambda: _offer(events, ProgressEvent(stage[:MAX_STAGE], done, total)))

    async def forward() -> None:
        async for event in received:
            await ctx.emit(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward)
        try:
            await runner.prepare(target, progress)
        except RunnerError as exc:
            raise CommandError("unavailable", str(exc)) from None
        finally:
            await trio.sleep(0)  # let the last events through
            await events.aclose()


def _offer(channel: trio.MemorySendChannel[ProgressEvent], event: ProgressEvent) -> None:
    with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
        channel.send_nowait(event)


def _table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "no processes"
    header = ["PROCESS", "STATE", "PID/ID", "PORT", "RESTARTS", "UPTIME", "LAST EXIT"]
    lines = [
        [
            f"{r['app']}/{r['process']}",
            str(r["state"]),
            str(r["ref"] or "-"),
            str(r.get("port") or "-"),
            str(r["restarts"]),
            f"{r['uptime_s']}s" if r["uptime_s"] is not None else "-",
            str(r["last_exit"] or r["last_error"] or "-"),
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *lines]
    )


async def _settled(ctx: Context, app: str) -> None:
    """Wait briefly until no process of the app is STARTING."""
    with trio.move_on_after(START_WAIT):
        while any(p.state == State.STARTING for p in ctx.processes.processes_of(app)):
            await trio.sleep(0.01)


async def _start(ctx: Context, app: str, verb: str, stop_first: bool) -> Result:
    record = await load_app(ctx, app)
    await check_host_meets(ctx, app, record.settings, record.source.kind)
    await _prepare(ctx, record)
    if stop_first:
        await ctx.processes.stop_app(app)
    await ctx.processes.start_app(app)
    ctx.release_lock()
    await _settled(ctx, app)
    rows = ctx.processes.report(app)
    return Result(f"{verb} {app}... done\n{_table(rows)}", rows)


async def restart_for_config(ctx: Context, app: str) -> list[str]:
    """After a change of the app's config (under the lock): its running processes restarted to take
    it, as ps:restart restarts them; the lock let go while they start. The names of those restarted."""
    names = await ctx.processes.restart_for_config(app)
    if names:
        ctx.release_lock()
        await _settled(ctx, app)
    return names


@REGISTRY.command(
    "ps:start",
    summary="start the app's processes (and keep them running)",
    mutating=True,
    streaming=True,
    runs_code=True,
)
async def start(ctx: Context, params: AppParams) -> Result:
    return await _start(ctx, params.app, "Starting", stop_first=False)


@REGISTRY.command("ps:stop", summary="stop the app's processes (SIGTERM, then SIGKILL)", mutating=True)
async def stop(ctx: Context, params: AppParams) -> Result:
    await load_app(ctx, params.app)
    await ctx.processes.stop_app(params.app)
    return Result(f"Stopping {params.app}... done", ctx.processes.report(params.app))


@REGISTRY.command("ps:restart", summary="stop, then start the app's processes", mutating=True, runs_code=True)
async def restart(ctx: Context, params: AppParams) -> Result:
    return await _start(ctx, params.app, "Restarting", stop_first=True)


@REGISTRY.command("ps:scale", summary="how many processes of each type", mutating=True, runs_code=True)
async def scale(ctx: Context, params: ScaleParams) -> Result:
    counts: dict[str, int] = {}
    for pair in params.counts:
        match = SCALE_PAIR.match(pair)
        if not match:
            raise invalid_argument(f"invalid scale {pair!r}: expected TYPE=N")
        count = int(match.group("count"))
        if not 0 <= count <= MAX_SCALE:
            raise invalid_argument(f"invalid scale {pair!r}: N must be between 0 and {MAX_SCALE}")
        counts[match.group("type")] = count
    if not counts:
        raise invalid_argument("nothing to scale: give TYPE=N")
    await load_app(ctx, params.app)
    scale = await ctx.processes.scale(params.app, counts)
    text = ", ".join(f"{kind}={count}" for kind, count in sorted(scale.items()))
    return Result(f"Scaling {params.app}: {text}", scale)


@REGISTRY.command("ps:set", summary="set a process setting (restart-policy)", mutating=True)
async def set_(ctx: Context, params: SetParams) -> Result:
    if params.key != "restart-policy":
        raise invalid_argument(f"unknown process setting {params.key!r}; known: restart-policy")
    value = check_restart_policy(params.value)
    record = await load_app(ctx, params.app)
    await ctx.store.save_settings(params.app, msgspec.structs.replace(record.settings, restart_policy=value))
    await ctx.processes.restart_policy_changed(params.app, RestartPolicy.parse(value))
    return Result(f"Set restart-policy of {params.app} to {value}")


@REGISTRY.command(
    "ps:report", summary="each process: state, pid, port, restarts, uptime, last exit", mutating=False
)
async def report(ctx: Context, params: ReportParams) -> Result:
    if params.app is not None:
        await load_app(ctx, params.app)
        apps = [params.app]
    else:
        apps = [r.name for r in await ctx.store.list_apps() if ctx.caller.may_see(r.name)]
    rows = [row for app in apps for row in await ctx.processes.report_detailed(app)]
    return Result(_table(rows), rows)


REBUILD = "build the app again from its source and replace its processes if they run"


@REGISTRY.command("ps:rebuild", summary=REBUILD, mutating=True, streaming=True, runs_code=True)
async def rebuild(ctx: Context, params: AppParams) -> Result:
    record = await load_app(ctx, params.app)
    kind = record.source.kind
    if kind == "none":
        raise invalid_argument(f"{params.app} has nothing to rebuild: give it a source first")
    if kind == "git":
        return await git.rebuild(ctx, record)
    await check_host_meets(ctx, params.app, record.settings, kind)
    desired, _ = await ctx.store.get_runtime(params.app)
    if through_daemon(kind):  # the container made anew from the image
        await ctx.processes.release_app(params.app)
        runner, target = await ctx.processes.runner_for(record)
        try:
            await runner.remove(target, keep_data=True)
        except RunnerError as exc:
            raise CommandError("unavailable", str(exc)) from None
        await _prepare(ctx, record)
    if desired == RUNNING:
        await ctx.processes.redeploy(params.app)
    what = {"archive": "its live release", "image": "a new container"}.get(kind, "nothing to build")
    started = "restarted" if desired == RUNNING else f"start it with: ps:start {params.app}"
    rows = ctx.processes.report(params.app)
    return Result(
        f"Rebuilding {params.app}: {what}... done ({started})", {"app": params.app, "processes": rows}
    )
