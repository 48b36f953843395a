"""Supervision of one process: an explicit state machine, restart policies and exponential backoff.

    STOPPED -> STARTING -> RUNNING -> (exit) -> BACKOFF -> STARTING ...
                                   -> (exit, policy says no more) -> EXITED | FAILED
    any running state -> STOPPING -> STOPPED

Every transition goes through `_enter`, the one place that checks it, records it and tells the logs.
Backoff doubles from 1 s to 60 s with jitter, and starts over once a process has stayed up 10 s.
A runner whose engine restarts the process itself (`features.engine_restarts`, a container) applies the
policy there; the process then goes through the same states as the engine reports them, and its exit
is final once the engine has given up.
"""

from __future__ import annotations

import enum
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from berthd.errors import CommandError
from berthd.log import LOG
from berthd.runners import EngineRun, ExitStatus, Handle, ProcessSpec, Runner, RunnerError
from berthd.supervision.logs import LogFile


class State(enum.StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FAILED = "FAILED"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.FAILED, State.STOPPING, State.STOPPED}),
    State.RUNNING: frozenset({State.BACKOFF, State.EXITED, State.FAILED, State.STOPPING}),
    # EXITED, FAILED: an engine that restarts the process itself gave up while berthd saw it wait
    State.BACKOFF: frozenset({State.STARTING, State.STOPPING, State.STOPPED, State.EXITED, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.EXITED: frozenset({State.STARTING, State.STOPPED}),
    State.FAILED: frozenset({State.STARTING, State.STOPPED}),
}

_POLICY = re.compile(r"^(no|always|on-failure)(?::([1-9][0-9]*))?\Z")


@dataclass(frozen=True)
class RestartPolicy:
    kind: str  # "no", "on-failure", "always"
    max_failures: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> RestartPolicy:
        match = _POLICY.match(text or "always")
        if not match or (match.group(2) and match.group(1) != "on-failure"):
            raise ValueError(f"invalid restart policy {text!r}")
        return cls(match.group(1), int(match.group(2)) if match.group(2) else None)

    def restarts_after(self, status: ExitStatus, consecutive_failures: int) -> bool:
        if self.kind == "no":
            return False
        if self.kind == "always":
            return True
        if status.success:
            return False
        return self.max_failures is None or consecutive_failures < self.max_failures

    def __str__(self) -> str:
        return f"{self.kind}:{self.max_failures}" if self.max_failures else self.kind


@dataclass(frozen=True)
class Backoff:
    first: float = 1.0
    cap: float = 60.0
    reset_after: float = 10.0
    jitter: float = 0.1

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before restart number `attempt` (0-based): 1, 2, 4 ... 60 s, each +/- jitter."""
        base = min(self.cap, self.first * (2 ** min(attempt, 16)))
        return float(base * rng.uniform(1 - self.jitter, 1 + self.jitter))


SpecBuilder = Callable[[], Awaitable[ProcessSpec]]
Generation = Callable[[], int]  # the app's config generation (`berthd.store.Store.config_generation`)
HandleSaver = Callable[[Handle | None], Awaitable[None]]
Ended = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class SupervisionCounts:
    """Since berthd started, over all processes (for the metrics): restarts, berthd's or an engine's,
    and give-ups (a process that entered FAILED)."""

    restarts: int = 0
    give_ups: int = 0


@dataclass
class SupervisedProcess:
    app: str
    name: str
    runner: Runner
    build_spec: SpecBuilder
    log: LogFile
    policy: RestartPolicy
    save_handle: HandleSaver
    ended: Ended  # told when the policy lets the process stay ended: it stays so across restarts
    stop_timeout: float = 10.0
    config_generation: Generation = lambda: 0
    counts: SupervisionCounts = field(default_factory=SupervisionCounts)  # the manager's, shared
    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)

    state: State = State.STOPPED
    handle: Handle | None = None
    restarts: int = 0
    failures: int = 0  # consecutive, for on-failure:N
    attempt: int = 0  # for the backoff; back to 0 once a run lasted reset_after seconds
    last_exit: ExitStatus | None = None
    last_error: str | None = None
    started_at: float | None = None
    next_start_at: float | None = None
    history: list[tuple[float, State]] = field(default_factory=list)
    failure: BaseException | None = None
    _restarts_at_start: int = 0  # the engine counts its restarts from each start of berthd's
    _engine_looked_at: float = 0.0  # looks at the engine can end out of order: the latest counts
    _wanted: bool = False
    _stop_requested: trio.Event = field(default_factory=trio.Event)
    _finished: trio.Event = field(default_factory=trio.Event)

    def _enter(self, new: State, why: str = "") -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"{self.app}/{self.name}: no transition {self.state} -> {new}")
        self.state = new
        if new == State.FAILED:
            self.counts.give_ups += 1
        self.history.append((time.monotonic(), new))
        del self.history[:-50]
        message = f"{new}" + (f": {why}" if why else "")
        self.log.note(message)
        LOG.info("%s %s %s", self.app, self.name, message)

    @property
    def uptime(self) -> float | None:
        if self.state == State.RUNNING and self.started_at is not None:
            return time.time() - self.started_at
        return None

    async def supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The process's life, until a stop is requested or the policy gives up."""
        self._wanted = True
        task_status.started()
        try:
            while self._wanted:
                self._enter(State.STARTING)
                try:
                    self.handle = await self._launch()
                except (RunnerError, ValueError, CommandError) as exc:
                    # an engine away is a failed start like any other: retried after the backoff
                    self.last_error = exc.message if isinstance(exc, CommandError) else str(exc)
                    self.handle = None
                    status: ExitStatus | None = None
                    ran_for = 0.0
                else:
                    self.last_error = None
                    self.started_at = time.time()
                    self._restarts_at_start = self.restarts
                    # before any await: the note comes ahead of the process's first output in its log
                    self._enter(State.RUNNING, f"{self.runner.name} {self.handle.ref}")
                    await self.save_handle(self.handle)
                    status = await self._wait_or_stop()
                    ran_for = time.time() - self.started_at
                    self.log.flush_partial()
                    self.last_exit = status
                    await self.save_handle(None)
                    self.handle = None
                if not self._wanted:
                    break
                if ran_for >= self.backoff.reset_after:
                    self.attempt = 0
                    self.failures = 0
                failed = status is None or not status.success
                self.failures = self.failures + 1 if failed else 0
                why = status.describe() if status else f"could not start: {self.last_error}"
                if status is not None and self.runner.features.engine_restarts:
                    # the engine restarted it while the policy let it: this exit is the one it gave up on
                    given_up = failed and self.policy.kind != "no"
                    self._enter(State.FAILED if given_up else State.EXITED, why)
                    await self.ended()
                    return
                if not self.policy.restarts_after(status or ExitStatus(1), self.failures):
                    given_up = self.policy.kind == "on-failure" and failed
                    await self.ended()  # recorded before it shows: a berthd killed now keeps it ended
                    self._enter(State.FAILED if given_up or status is None else State.EXITED, why)
                    return
                delay = self.backoff.delay(self.attempt, self.rng)
                self.attempt += 1
                self.next_start_at = time.time() + delay
                self._enter(State.BACKOFF, f"{why}; restarting in {delay:.1f} s")
                with trio.move_on_after(delay):
                    await self._stop_requested.wait()
                self.next_start_at = None
                if self._wanted:
                    self.restarts += 1
                    self.counts.restarts += 1
            if self.state != State.STOPPED:
                self._enter(State.STOPPED)
        except Exception as exc:  # noqa: BLE001 - one broken process must not take berthd down
            failure = (
                exc.exceptions[0] if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1 else exc
            )
            if isinstance(failure, CommandError):  # a runner's refusal (an engine away): no traceback needed
                LOG.warning("supervision of %s/%s: %s", self.app, self.name, failure.message)
            else:
                LOG.exception("supervision of %s/%s failed", self.app, self.name)
            self.failure = failure
            self.last_error = f"supervision failed: {getattr(failure, 'message', failure)}"
            self.state = State.FAILED
            self.counts.give_ups += 1
            self.log.note(f"FAILED: {self.last_error}")
        finally:
            self._finished.set()

    async def _launch(self) -> Handle:
        """The process started with the app's config as it is when the start ends. The config is read
        when the spec is built, and the runner may take long to start (a container waits to be
        healthy): a change committed meanwhile would be missed, so one seen after the start ends the
        process started with the old config and starts it again at once with the new one."""
        while True:
            generation = self.config_generation()
            spec = await self.build_spec()
            if self.config_generation() != generation:
                continue  # changed while the spec was built: built again, before anything started
            handle = await self.runner.start(spec, self.log.write)
            if self.config_generation() == generation or not self._wanted:
                return handle
            self.log.note("the config changed while it started: starting it again with the new one")
            with trio.CancelScope(shield=True):
                if await self.runner.stop(handle, self.stop_timeout, signal.SIGTERM) is None:
                    await self.runner.wait(handle)

    async def _wait_or_stop(self) -> ExitStatus:
        assert self.handle is not None
        handle = self.handle
        result: list[ExitStatus] = []
        async with trio.open_nursery() as nursery:

            async def on_exit() -> None:
                result.append(await self.runner.watch(handle, self._follow_engine))
                nursery.cancel_scope.cancel()

            async def on_stop() -> None:
                await self._stop_requested.wait()
                self._enter(State.STOPPING)
                with trio.CancelScope(shield=True):
                    stopped = await self.runner.stop(handle, self.stop_timeout, signal.SIGTERM)
                    result.append(stopped or await self.runner.wait(handle))
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_exit)
            nursery.start_soon(on_stop)
        return result[0]

    def _follow_engine(self, run: EngineRun) -> None:
        """What the engine that restarts the process says: its restarts and exits are the process's, its
        wait before a restart is BACKOFF."""
        if self.state not in (State.RUNNING, State.BACKOFF) or run.looked_at < self._engine_looked_at:
            return  # stopping (the engine's word no longer matters), or an older look than one applied
        self._engine_looked_at = run.looked_at
        before, self.restarts = self.restarts, self._restarts_at_start + run.restarts
        self.counts.restarts += max(0, self.restarts - before)
        if run.last_exit is not None:
            self.last_exit = run.last_exit
        if run.restarting:
            if self.state == State.RUNNING:
                why = run.last_exit.describe() if run.last_exit else "it exited"
                self._enter(State.BACKOFF, f"{why}; the engine restarts it")
            return
        if self.restarts > before and (run.ended or self.state == State.RUNNING):
            # a run (or an exit) came and went between two looks: no state to show for it, but a note
            self.log.note(f"restarted by the engine (restart {self.restarts})")
        if run.ended:
            return  # the supervision loop ends it
        if run.started_at is not None:
            self.started_at = run.started_at  # the engine's: its uptime, across berthd's restarts too
        if self.state == State.BACKOFF:
            self._enter(State.STARTING)
            self._enter(State.RUNNING, f"restarted by the engine (restart {self.restarts})")

    async def refresh(self) -> None:
        """Ask an engine that restarts the process itself now, so that a report says what is true now
        rather than at the last look. Raises the runner's error when the engine cannot be asked."""
        handle = self.handle
        if handle is None or not self.runner.features.engine_restarts:
            return
        run = await self.runner.look(handle)
        if run is not None and self.handle is handle:
            self._follow_engine(run)

    def mark_stopped(self) -> None:
        """After a stop, a process whose policy had given up (EXITED, FAILED) is STOPPED too."""
        if self.state in (State.EXITED, State.FAILED):
            self._enter(State.STOPPED, "stopped")

    async def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after the stop timeout) and wait until it is STOPPED.
        A stop the runner could not carry out (its engine is away) is raised, not reported as done."""
        self._wanted = False
        self._stop_requested.set()
        await self._finished.wait()
        if isinstance(self.failure, CommandError):
            failure, self.failure = self.failure, None
            raise failure
