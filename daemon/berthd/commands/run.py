"""run, jobs:list, jobs:info: one-shot executions of an app."""

from __future__ import annotations

from typing import Annotated

import msgspec

from berthd.apps.settings import check_timeout
from berthd.commands.apps import load_app
from berthd.commands.sources import check_host_meets
from berthd.errors import CommandError, not_found
from berthd.server.context import Context
from berthd.server.params import AppName, Params, about
from berthd.server.registry import REGISTRY, Result
from berthd.store.records import JobRecord
from berthd.supervision.jobs import describe_job, run_job

DEFAULT_TIMEOUT = 600


class RunParams(Params):
    app: AppName
    timeout: Annotated[int | None, about("seconds it may take (default: the app's timeout)")] = None
    stdin: Annotated[str | None, about("text given on its standard input")] = None
    args: Annotated[list[str], about("its arguments (instead of the app's)")] = msgspec.field(
        default_factory=list
    )
    positional = ("app",)
    rest = "args"
    secret = frozenset({"stdin"})
    metavars = {"timeout": "SECONDS", "stdin": "TEXT"}


class JobsParams(Params):
    app: AppName | None = None
    positional = ("app",)


class JobParams(Params):
    job: Annotated[str, about("a job id (jobs:list)")]
    positional = ("job",)


def job_data(job: JobRecord) -> dict[str, object]:
    data = msgspec.to_builtins(job)
    data["job_id"] = data.pop("id")
    return dict(data)


@REGISTRY.command(
    "run", summary="run the app once; streams its output", mutating=False, streaming=True, runs_code=True
)
async def run(ctx: Context, params: RunParams) -> Result:
    record = await load_app(ctx, params.app)
    await check_host_meets(ctx, params.app, record.settings, record.source.kind)
    timeout = check_timeout(
        params.timeout if params.timeout is not None else record.settings.timeout or DEFAULT_TIMEOUT
    )
    job = await run_job(
        ctx.processes,
        record,
        params.args,
        timeout,
        params.stdin,
        ctx.emit,
    )
    data = job_data(job)
    if job.timed_out:
        raise CommandError("timeout", describe_job(job), data)
    if job.error:
        raise CommandError("invalid_argument", describe_job(job), data)
    if job.exit_code != 0:
        raise CommandError(None, describe_job(job), data)  # the run went fine; the process failed
    return Result(describe_job(job), data)


@REGISTRY.command("jobs:list", summary="past runs, newest first", mutating=False)
async def jobs_list(ctx: Context, params: JobsParams) -> Result:
    if params.app is not None:
        await load_app(ctx, params.app)
    jobs = [j for j in await ctx.store.list_jobs(params.app) if ctx.caller.may_see(j.app)]
    lines = [f"{j.id}  {j.app}  {j.state}  exit={j.exit_code}  {j.duration_s}s" for j in jobs]
    return Result("\n".join(lines), [job_data(j) for j in jobs])


@REGISTRY.command("jobs:info", summary="one past run", mutating=False)
async def jobs_info(ctx: Context, params: JobParams) -> Result:
    job = await ctx.store.get_job(params.job)
    if job is None or not ctx.caller.may_see(job.app):  # another's job: as if there were none
        raise not_found(f"no job {params.job}")
    return Result(f"{job.id}: {describe_job(job)}\noutput: {job.output_dir}", job_data(job))
