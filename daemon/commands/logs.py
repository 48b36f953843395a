"""logs APP [--num N] [--tail] [--process TYPE.N]: the last lines, then (with --tail) new ones as they come."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import msgspec
import trio

from daemon.commands.apps import load_app
from daemon.context import Context
from daemon.errors import invalid_argument
from daemon.logs import LogFile, Missed, follow, parse_line, tail_lines
from daemon.params import AppName, Params
from daemon.registry import REGISTRY, Result
from protocol.messages import LogEvent

MAX_LINES = 100_000


class LogsParams(Params):
    app: AppName
    num: Annotated[
        int, msgspec.Meta(ge=0, le=MAX_LINES, description=f"a number of lines from 0 to {MAX_LINES}")
    ] = 100
    tail: bool = False
    process: str | None = None
    positional = ("app",)
    metavars = {"num": "N", "process": "TYPE.N"}


def _logs_of(ctx: Context, app: str, process: str | None) -> list[tuple[str, LogFile]]:
    folder = ctx.services.app_dir(app) / "logs"
    names = sorted({p.name.split(".log")[0] for p in folder.glob("*.log*")}) if folder.exists() else []
    names = sorted(set(names) | {p.name for p in ctx.processes.processes_of(app)})
    if process is not None:
        if process not in names:
            raise invalid_argument(f"no process {process!r} in {app}; known: {', '.join(names) or 'none'}")
        names = [process]
    return [(name, ctx.processes.log_of(app, name)) for name in names]


@REGISTRY.command("logs", summary="the app's last log lines; --tail follows", mutating=False, streaming=True)
async def logs(ctx: Context, params: LogsParams) -> Result:
    await load_app(ctx, params.app)
    sources = _logs_of(ctx, params.app, params.process)
    lines = []
    for name, log in sources:
        raw = await trio.to_thread.run_sync(tail_lines, log.files_newest_first(), params.num)
        lines += [parse_line(line, name) for line in raw]
    lines.sort(key=lambda line: line.timestamp)
    lines = lines[-params.num :] if params.num else []
    if not params.tail:
        text = "\n".join(f"{line.timestamp} {line.process} {line.stream}: {line.text}" for line in lines)
        return Result(text, [dataclasses.asdict(line) for line in lines])
    for line in lines:
        await ctx.emit(LogEvent(params.app, line.process, line.stream, line.text))
    async with trio.open_nursery() as nursery:
        for name, log in sources:
            nursery.start_soon(_follow_one, ctx, params.app, name, log)
        nursery.start_soon(_until_client_leaves, ctx, nursery.cancel_scope)
    return Result("end of logs")


async def _follow_one(ctx: Context, app: str, name: str, log: LogFile) -> None:
    missed = 0
    async for batch in follow(log):
        if isinstance(batch, Missed):
            missed += batch.count
            continue
        for raw in batch:
            line = parse_line(raw, name)
            await ctx.emit(LogEvent(app, name, line.stream, line.text, missed))
            missed = 0


async def _until_client_leaves(ctx: Context, scope: trio.CancelScope) -> None:
    while not ctx.client_gone():
        await trio.sleep(0.5)
    scope.cancel()
