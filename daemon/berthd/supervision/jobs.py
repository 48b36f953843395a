"""One-shot runs (`run APP`): one execution with a timeout, its output kept in files and streamed.

The job's folder holds `stdout.txt`, `stderr.txt` and `logs.txt` (both streams, line by line, in the
order they came, a line longer than `MAX_LOG_LINE` in pieces). The client gets `log` events as lines
come; a client too slow to keep up is told how many lines it missed, holds at most
`EVENT_BACKLOG_BYTES` of berthd's memory, and never slows the process down. A job keeps at most
`max_output` bytes of output: past that, the files and the client get a marker, the rest is counted
and dropped (the process runs on, its pipes drained). Job folders are pruned by count and age.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

from berth.messages import Event
from berthd.apps.launch import MAIN, process_types
from berthd.errors import CommandError
from berthd.log import LOG
from berthd.runners import ExitStatus, ProcessSpec, Runner, RunnerError
from berthd.store import modes, trees
from berthd.store.records import AppRecord, JobRecord
from berthd.supervision.logs import MAX_LOG_LINE, EventBacklog, LineCutter
from berthd.supervision.manager import ProcessManager

Emit = Callable[[Event], Awaitable[None]]  # sends an event to the client who asked

OUTPUT_FILES = ("stdout", "stderr", "logs")
TIMED_OUT = "Process execution timed out"
PRUNE_INTERVAL = 3600.0


def new_job_id() -> str:
    return f"job-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def truncation_marker(max_output: int) -> str:
    return f"[berthd: output truncated: a job keeps at most {max_output} bytes of output]"


@dataclass
class JobOutput:
    """Writes the three files and hands lines to the client's backlog; never waits for either."""

    folder: Path
    backlog: EventBacklog
    max_output: int
    kept: int = 0  # bytes of output in stdout.txt and stderr.txt
    dropped: int = 0  # bytes of output past max_output, not kept
    _cutter: LineCutter = field(default_factory=lambda: LineCutter(MAX_LOG_LINE))
    _fds: dict[str, int] = field(default_factory=dict)

    async def open(self) -> None:
        """The three files, made on a worker thread: creating files is disk work."""
        self._fds.update(await trio.to_thread.run_sync(_create_output_files, self.folder))

    def write(self, stream: str, data: bytes) -> None:
        if self.dropped:
            self.dropped += len(data)
            return
        room = self.max_output - self.kept
        if len(data) > room:
            self.dropped = len(data) - room
            data = data[:room]
        if data:
            os.write(self._fds[stream], data)
            self.kept += len(data)
            for block, continued in self._cutter.complete(stream, data):
                self._lines(stream, block, continued)
        if self.dropped:
            self._truncate()

    def _lines(self, stream: str, block: bytes, continued: bool = False) -> None:
        os.write(self._fds["logs"], block)
        self.backlog.offer_block(stream, block, continued)

    def _truncate(self) -> None:
        """The limit is reached: what is cut so far ends its line, and every file says it was cut."""
        for stream, block in self._cutter.rest():
            self._lines(stream, block)
        marker = truncation_marker(self.max_output)
        for fd in self._fds.values():
            os.write(fd, f"\n{marker}\n".encode())
        self.backlog.tell(marker)

    def close(self) -> None:
        for stream, block in self._cutter.rest():
            self._lines(stream, block)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.backlog.close()


def _create_output_files(folder: Path) -> dict[str, int]:
    fds: dict[str, int] = {}
    try:
        for name in OUTPUT_FILES:
            # made 0600 (berthd's umask), group the app's (the folder is set-gid); the group's read is
            # added before a byte is written: never open to more than that
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fds[name] = os.open(folder / f"{name}.txt", flags, modes.OUTPUT_FILE_MODE)
            os.fchmod(fds[name], modes.OUTPUT_FILE_MODE)
    except OSError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _make_folder(app_dir: Path, folder: Path, gid: int) -> None:
    """The job's folder (BERTH_JOB_DIR): the app's group enters it and reads the outputs, only berthd
    writes to it."""
    modes.open_path(app_dir, folder.parent, gid)
    modes.open_output_folder(folder, gid)


async def run_job(
    manager: ProcessManager,
    record: AppRecord,
    extra_args: list[str],
    timeout: float,
    stdin: str | None,
    emit: Emit,
) -> JobRecord:
    runner, target = await manager.runner_for(record)
    if not runner.features.exec:
        raise CommandError(
            "invalid_argument",
            f"{record.name} runs through the {runner.name} runner, which has no one-shot runs: use ps:start",
        )
    types = process_types(record)
    if not types:
        raise CommandError(
            "invalid_argument", f"App {record.name} has nothing to run yet: give it a source first"
        )
    kind = MAIN if MAIN in types else next(iter(types))
    process = await runner.spec_for(target, f"{kind}.1")
    job_id = new_job_id()
    app_dir = manager.data_dir / "apps" / record.name
    folder = app_dir / "jobs" / job_id
    await trio.to_thread.run_sync(_make_folder, app_dir, folder, modes.app_group(record.settings.user))
    env = {k: v for k, v in process.env.items() if k != "BERTH_PROCESS"}
    env.update({"BERTH_JOB_ID": job_id, "BERTH_JOB_DIR": str(folder)})
    argv = [*process.argv, *extra_args]
    spec = msgspec.structs.replace(process, process=job_id, argv=argv, env=env, stdin=stdin is not None)
    job = JobRecord(job_id, record.name, argv, time.time(), str(folder))
    await manager.store.save_job(job)
    try:
        outcome = await execute(
            runner, spec, folder, timeout, stdin, emit, manager.config.job_output_max_bytes
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            interrupted = msgspec.structs.replace(
                job, state="failed", finished_at=time.time(), error="interrupted"
            )
            await manager.store.save_job(interrupted)
        raise
    duration = round(time.monotonic() - outcome.started, 3)
    job = msgspec.structs.replace(
        job,
        state="timed_out" if outcome.timed_out else ("failed" if outcome.error else "finished"),
        finished_at=time.time(),
        exit_code=outcome.status.code if outcome.status else None,
        signal=outcome.status.signal if outcome.status else None,
        timed_out=outcome.timed_out,
        duration_s=duration,
        error=outcome.error,
        truncated=outcome.dropped > 0,
        dropped_bytes=outcome.dropped,
    )
    await manager.store.save_job(job)
    await prune_jobs(manager, record.name)
    return job


@dataclass
class Outcome:
    started: float
    status: ExitStatus | None = None
    timed_out: bool = False
    error: str | None = None  # could not start
    dropped: int = 0  # bytes of output over the job's limit


async def execute(
    runner: Runner,
    spec: ProcessSpec,
    folder: Path,
    timeout: float,
    stdin: str | None,
    emit: Emit,
    max_output: int,
) -> Outcome:
    """Run one process to its end (or its timeout, when its group is killed), its output in `folder`."""
    output = JobOutput(folder, EventBacklog(spec.app, spec.process), max_output)
    await output.open()
    outcome = Outcome(time.monotonic())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.backlog.deliver, emit)
        try:
            try:
                handle = await runner.start(spec, output.write)
            except RunnerError as exc:
                outcome.error = str(exc)
                if "No such file" in outcome.error:
                    outcome.status = ExitStatus(127)  # as a shell says it; the cause stays in `error`
            else:
                if spec.stdin:
                    nursery.start_soon(_feed_stdin, runner.stdin_of(handle), (stdin or "").encode())
                with trio.move_on_after(timeout) as deadline:
                    outcome.status = await runner.wait(handle)
                if deadline.cancelled_caught:
                    outcome.timed_out = True
                    with trio.CancelScope(shield=True):
                        outcome.status = await runner.stop(handle, 0, signal.SIGKILL)
        finally:
            with trio.CancelScope(shield=True):
                output.close()
                outcome.dropped = output.dropped
    return outcome


async def _feed_stdin(stream: trio.lowlevel.FdStream | None, data: bytes) -> None:
    if stream is None:
        return
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


def describe_job(job: JobRecord) -> str:
    return _how_it_ended(job) + _truncated(job)


def _how_it_ended(job: JobRecord) -> str:
    if job.timed_out:
        return f"{TIMED_OUT} after {job.duration_s} s"
    if job.error:
        not_found = " (exit code 127: executable not found)" if job.exit_code == 127 else ""
        return f"Process could not start: {job.error}{not_found}"
    if job.exit_code == 127:
        return "Process exited with code 127: executable not found"
    if job.signal is not None:
        return f"Process killed by signal {job.signal}"
    return f"Process exited with code {job.exit_code}"


def _truncated(job: JobRecord) -> str:
    if not job.truncated:
        return ""
    return f" (output truncated: {job.dropped_bytes} bytes over the job's limit were not kept)"


# retention


async def prune_jobs(manager: ProcessManager, app: str | None = None) -> None:
    """Past jobs beyond the newest `jobs_keep` of an app, or older than `jobs_max_age`: their rows and
    folders go, and so do build folders by the same rules. Running jobs stay."""
    store, config = manager.store, manager.config
    cutoff = time.time() - config.jobs_max_age
    for job in await store.jobs_to_prune(app, config.jobs_keep, cutoff):
        await trio.to_thread.run_sync(trees.remove_or_log, Path(job.output_dir))
        await store.delete_job(job.id)
    apps = [app] if app else [record.name for record in await store.list_apps()]
    apps_dir = manager.data_dir / "apps"
    await trio.to_thread.run_sync(_prune_builds, apps_dir, apps, config.jobs_keep, cutoff)


def _prune_builds(apps_dir: Path, apps: list[str], keep: int, cutoff: float) -> None:
    for app in apps:
        try:
            builds = sorted(
                (apps_dir / app / "builds").iterdir(), key=lambda p: p.stat().st_mtime, reverse=True
            )
        except OSError:
            continue
        for index, folder in enumerate(builds):
            try:
                if index >= keep or folder.stat().st_mtime < cutoff:
                    trees.remove_or_log(folder)
            except OSError:
                continue


async def prune_jobs_forever(manager: ProcessManager) -> None:
    while True:
        try:
            await prune_jobs(manager)
        except (OSError, sqlite3.Error):  # the disk or the database: the next sweep tries again
            LOG.exception("pruning old jobs failed")
        await trio.sleep(PRUNE_INTERVAL)
