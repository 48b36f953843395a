"""logs APP [--num N | -n N] [--tail | -t] [--process TYPE.N]: the last lines, then (with --tail) new ones as they come.

A piece of a line too long to keep whole is marked `continued` (its line goes on in the next one). A
follower that cannot keep up is told how many lines it missed (`missed`); it holds a bounded amount of
berthd's memory whatever the app writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Annotated

import msgspec
import trio

from berth.messages import LogEvent
from berthd.commands.apps import load_app
from berthd.errors import invalid_argument
from berthd.runners import Runner, Target
from berthd.server.context import Context
from berthd.server.params import AppName, Params
from berthd.server.registry import REGISTRY, Result
from berthd.supervision.logs import EventBacklog, LogFile, LogLine, Missed, follow, parse_line, tail_lines

MAX_LINES = 100_000
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # of log text in one answer: the newest lines that fit
LINE_COST = 64  # what a line adds to the answer beside its text (timestamp, names, JSON), roughly


class LogsParams(Params):
    app: AppName
    num: Annotated[
        int, msgspec.Meta(ge=0, le=MAX_LINES, description=f"a number of lines from 0 to {MAX_LINES}")
    ] = 100
    tail: Annotated[
        bool, msgspec.Meta(description="then keep streaming new lines until the client leaves")
    ] = False
    process: Annotated[str | None, msgspec.Meta(description="one process only (web.1); default: all")] = None
    positional = ("app",)
    metavars = {"num": "N", "process": "TYPE.N"}
    short_flags = {"t": "tail", "n": "num"}  # dokku's `logs APP -t`, `-n N`


def _logged_processes(folder: Path) -> set[str]:
    return {p.name.split(".log")[0] for p in folder.glob("*.log*")} if folder.exists() else set()


async def _logs_of(ctx: Context, app: str, process: str | None) -> list[tuple[str, LogFile]]:
    logged = await trio.to_thread.run_sync(_logged_processes, ctx.services.app_dir(app) / "logs")
    names = sorted(logged | {p.name for p in ctx.processes.processes_of(app)})
    if process is not None:
        if process not in names:
            raise invalid_argument(f"no process {process!r} in {app}; known: {', '.join(names) or 'none'}")
        names = [process]
    return [(name, ctx.processes.log_of(app, name)) for name in names]


@REGISTRY.command(
    "logs",
    summary="the app's last log lines; --tail follows",
    mutating=False,
    streaming=True,
    app_output=True,
)
async def logs(ctx: Context, params: LogsParams) -> Result:
    record = await load_app(ctx, params.app)
    runner, target = await ctx.processes.runner_for(record)
    if runner.features.engine_logs:
        return await _engine_logs(ctx, runner, target, params)
    if not runner.features.captured_logs:
        return Result(f"{record.name} runs through the {runner.name} runner: berthd does not see its output")
    sources = await _logs_of(ctx, params.app, params.process)
    lines: list[LogLine] = []
    left_out = False
    for name, log in sources:  # one process at a time, so what is held is one tail and the answer
        raw = await trio.to_thread.run_sync(tail_lines, log.files_newest_first(), params.num)
        lines, cut = _newest(lines + [parse_line(line, name) for line in raw], params.num)
        left_out = left_out or cut
    if not params.tail:
        text = "\n".join(map(_shown, lines))
        if left_out:
            text = f"(older lines left out: an answer holds at most {MAX_ANSWER_BYTES} bytes of log)\n{text}"
        return Result(text, [dataclasses.asdict(line) for line in lines])
    for line in lines:
        await ctx.emit(LogEvent(params.app, line.process, line.stream, line.text, continued=line.continued))
    async with trio.open_nursery() as nursery:
        for name, log in sources:
            nursery.start_soon(_follow_one, ctx, params.app, name, log)
        nursery.start_soon(until_client_leaves, ctx, nursery.cancel_scope)
    return Result("end of logs")


async def _follow_one(ctx: Context, app: str, name: str, log: LogFile) -> None:
    missed = 0
    async for batch in follow(log):
        if isinstance(batch, Missed):
            missed += batch.count
            continue
        for raw in batch:
            line = parse_line(raw, name)
            await ctx.emit(LogEvent(app, name, line.stream, line.text, missed, line.continued))
            missed = 0


def _newest(lines: list[LogLine], count: int) -> tuple[list[LogLine], bool]:
    """The newest `count` lines, in time order, no more of them than MAX_ANSWER_BYTES holds; and
    whether lines were left out for that limit."""
    lines.sort(key=lambda line: line.timestamp)
    lines = lines[-count:] if count else []
    size = 0
    for index in range(len(lines) - 1, -1, -1):
        size += len(lines[index].text) + LINE_COST
        if size > MAX_ANSWER_BYTES:
            return lines[index + 1 :], True
    return lines, False


def _shown(line: LogLine) -> str:
    more = " [continues]" if line.continued else ""
    return f"{line.timestamp} {line.process} {line.stream}: {line.text}{more}"


async def until_client_leaves(ctx: Context, scope: trio.CancelScope) -> None:
    """Cancels `scope` once the client has closed its connection (a follower's end)."""
    while not ctx.client_gone():
        await trio.sleep(0.5)
    scope.cancel()


async def _engine_logs(ctx: Context, runner: Runner, target: Target, params: LogsParams) -> Result:
    """The app's output as its engine keeps it."""
    app = target.app.name
    lines = await runner.logs(target, params.num)
    if not params.tail:
        text = "\n".join(f"{line.timestamp} main.1 {line.stream}: {line.text}" for line in lines)
        data = [
            {
                "timestamp": ln.timestamp,
                "stream": ln.stream,
                "text": ln.text,
                "process": "main.1",
                "continued": False,
            }
            for ln in lines
        ]
        return Result(text, data)
    for line in lines:
        await ctx.emit(LogEvent(app, "main.1", line.stream, line.text))
    token = trio.lowlevel.current_trio_token()
    backlog = EventBacklog(app, "main.1")

    def send(stream: str, line: str) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(backlog.offer, stream, line)

    async with trio.open_nursery() as nursery:

        async def follow() -> None:
            try:
                await runner.follow_logs(target, send)
            finally:
                backlog.close()

        nursery.start_soon(follow)
        nursery.start_soon(backlog.deliver, ctx.emit)
        nursery.start_soon(until_client_leaves, ctx, nursery.cancel_scope)
    return Result("end of logs")
