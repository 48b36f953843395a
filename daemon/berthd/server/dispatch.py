"""From one request line to one final answer: parse, look up, bind, lock, run, answer, log.

This is the only place that turns a handler's result or failure into a `Response`.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from berth.framing import TooLong
from berth.messages import QueuedEvent, Response, encode_line
from berth.request import Request, RequestError, parse_request
from berthd.access import enforce as access
from berthd.access.rules import CallerView
from berthd.errors import CommandError
from berthd.log import COMMAND_LOG, LOG
from berthd.server.context import Context, Emit, Services
from berthd.server.fairness import Pace
from berthd.server.params import Bound, bind_named, bind_tokens
from berthd.server.peercred import Peer
from berthd.server.redaction import NO_SECRETS, Scrubber, without_credentials
from berthd.server.registry import REGISTRY, Command, Result

INVALID_COMMAND = "Invalid command"
UNKNOWN_COMMAND = "<unknown>"  # the metrics' name for every unknown command: what a line asks is unbounded


async def dispatch(
    services: Services,
    raw: bytes | TooLong,
    peer: Peer,
    emit: Emit,
    client_gone: Callable[[], bool] = lambda: False,
    pace: Pace | None = None,
) -> Response | None:
    """The final answer to one line, or None for a blank line (which gets none). A line over the
    caller's `pace` (any line but a blank one) is not run: it is answered `busy`."""
    started = time.perf_counter()
    if isinstance(raw, TooLong):
        response = Response(False, f"Line too long: the limit is {raw.limit} bytes", error="line_too_long")
        _log(peer, "<line too long>", response, started)
        _audit(services, peer, "<line too long>", "<not shown>", response, started)
        _count(services, "<line too long>", response, started)
        return response
    try:
        request = parse_request(raw)
    except RequestError as exc:
        refusal = pace.refusal(started) if pace is not None else None
        response = refusal or Response(False, f"Invalid request: {exc}", error="invalid_request")
        _log(peer, f"<invalid request, {len(raw)} bytes>", response, started)
        _audit(services, peer, "<invalid request>", f"<{len(raw)} bytes, not shown>", response, started)
        _count(services, "<invalid request>", response, started)
        return response
    if request is None:
        return None
    if pace is not None and (refusal := pace.refusal(started)) is not None:
        refusal.id = request.id
        _log(peer, f"{request.cmd[:80]!r} (over the rate)", refusal, started)
        _count(services, "<over the rate>", refusal, started)
        return refusal
    outcome = await _run(services, request, peer, emit, client_gone)
    response = outcome.response
    if not response.ok:
        # an error message may quote an argument: never one of this request's secrets, nor a URL's password
        scrub = outcome.scrubber
        response = Response(False, scrub.text(response.output), scrub.data(response.data), response.error)
    response.id = request.id
    _log(peer, outcome.shown, response, started, outcome.output_size_only, outcome.held, outcome.scrubber)
    _audit(services, peer, outcome.command, outcome.arguments, response, started, outcome.rule)
    known = response.error != "invalid_command"
    _count(services, outcome.command if known else UNKNOWN_COMMAND, response, started, outcome.lock_waited)
    return response


@dataclass(slots=True)
class Outcome:
    response: Response
    shown: str
    command: str = field(kw_only=True)  # for the audit log: the registry's name, or what the line asked for
    arguments: list[str] | str = field(kw_only=True)  # redacted; a string says why they are not shown
    output_size_only: bool = False  # the log gets the size of a successful answer's output, not its text
    held: tuple[int, int] | None = None  # monotonic ns span during which the command held the lock
    lock_waited: float | None = None  # seconds the command waited for the lock, if it took it
    scrubber: Scrubber = NO_SECRETS
    rule: str | None = None  # the access rule that decided, when rules are set


async def _run(
    services: Services, request: Request, peer: Peer, emit: Emit, client_gone: Callable[[], bool]
) -> Outcome:
    registry = REGISTRY
    command = registry.lookup(request.cmd)
    if command is None:
        topic = registry.topic_help_name(request.cmd)
        if topic is not None and not request.tokens and not request.named:
            return Outcome(_ok(registry.topic_help(topic)), request.cmd, command=request.cmd, arguments=[])
        return Outcome(
            Response(False, INVALID_COMMAND, error="invalid_command"),
            f"{request.cmd[:80]!r} (unknown)",
            command=without_credentials(request.cmd[:80]),
            arguments="<unknown command: not shown>",
        )
    try:
        bound = _bind(command, request)
    except CommandError as exc:
        return Outcome(
            _failed(exc),
            f"{command.name} <arguments not understood>",
            command=command.name,
            arguments="<not understood: not shown>",
        )
    shown = " ".join([command.name, *bound.redacted])
    outcome = Outcome(
        Response(False, ""),
        shown,
        command.output_size_only,
        scrubber=bound.scrubber,
        command=command.name,
        arguments=bound.redacted,
    )
    rules = services.rules  # one set of rules for the whole request, even if a reload comes meanwhile
    touches = None  # what the rules judged, when they had to
    decision = None
    if rules.active and not peer.is_root:
        touches = bound.params.touches()
        decision = access.decide(rules, peer, command, touches)
        outcome.rule = decision.rule.label if decision.rule else None
        if not decision.allowed:
            outcome.response = _failed(access.refusal(rules, peer, command, touches.app, decision))
            return outcome
        if touches.app is None or not access.acts_for_owner(command):
            touches = None  # nothing of an app's own to check against its owner
    ctx = Context(services, peer, emit, client_gone=client_gone, access=CallerView(rules, peer, decision))

    async def queued(position: int) -> None:
        if command.streaming:
            await emit(QueuedEvent(position))

    try:
        if command.mutating:
            asked = time.monotonic_ns()
            await services.lock.acquire(queued)
            began = time.monotonic_ns()
            outcome.lock_waited = (began - asked) / 1e9

            def unlock() -> None:
                outcome.held = (began, time.monotonic_ns())
                services.lock.release()

            ctx.unlock = unlock
            try:
                if touches is not None:  # under the lock: the app cannot change before the handler runs
                    await access.check_app_owner(ctx, command, touches)
                result = await command.handler(ctx, bound.params)
            finally:
                ctx.release_lock()
        else:
            if touches is not None:
                await access.check_app_owner(ctx, command, touches)
            result = await command.handler(ctx, bound.params)
    except CommandError as exc:
        outcome.response = _failed(exc)
        return outcome
    except BaseExceptionGroup as group:
        # a handler's nursery wraps what its tasks raised: a refusal inside one is still a refusal
        refusals, rest = group.split(CommandError)
        if refusals is not None and rest is None:
            outcome.response = _failed(_first_leaf(refusals))
        elif isinstance(group, ExceptionGroup):  # a bug in one of its tasks: still one answer
            _internal(outcome, group)
        else:
            raise  # a cancellation or an interrupt is not this command's to answer
        return outcome
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected failure becomes `internal`
        _internal(outcome, exc)
        return outcome
    outcome.response = _ok(result)
    return outcome


def _internal(outcome: Outcome, exc: Exception) -> None:
    # a library's message may quote an argument (a URL, a password): scrubbed like the answer
    trace = outcome.scrubber.text("".join(traceback.format_exception(exc)).rstrip())
    LOG.error("command %s failed\n%s", outcome.shown, trace)
    outcome.response = Response(False, "Internal error (see the daemon log)", error="internal")


def _first_leaf(group: BaseExceptionGroup[CommandError]) -> CommandError:
    first = group.exceptions[0]
    return first if isinstance(first, CommandError) else _first_leaf(first)


def _bind(command: Command, request: Request) -> Bound:
    if request.named is not None:
        return bind_named(command.name, command.params, request.named)
    return bind_tokens(command.name, command.params, request.tokens)


def _ok(result: Result) -> Response:
    return Response(True, result.output, data=result.data)


def _failed(exc: CommandError) -> Response:
    return Response(False, exc.message, data=exc.data, error=exc.code)


def _log(
    peer: Peer,
    shown: str,
    response: Response,
    started: float,
    output_size_only: bool = False,
    held: tuple[int, int] | None = None,
    scrubber: Scrubber = NO_SECRETS,
) -> None:
    if not COMMAND_LOG.enabled:
        return
    elapsed_ms = (time.perf_counter() - started) * 1000
    if output_size_only and response.ok:
        logged = Response(
            True, f"<{len(response.output)} characters not logged>", error=response.error, id=response.id
        )
    else:
        logged = msgspec.structs.replace(response, data=None)
    lock = f" lock={held[0]}-{held[1]}" if held else ""
    answer = encode_line(logged).decode().rstrip()
    if scrubber is not NO_SECRETS:  # (identity, not truth: no Python-level __bool__ on the hot path)
        answer = scrubber.text(answer)  # the answer only: the caller, the timing and the lock span are ours
    line = f"{peer} cmd={json.dumps(shown)} -> {answer} ({elapsed_ms:.1f} ms){lock}"
    COMMAND_LOG.write(without_credentials(line) if "@" in line else line)


def _count(
    services: Services, command: str, response: Response, started: float, lock_waited: float | None = None
) -> None:
    result = "ok" if response.ok else response.error or "failed"
    services.metrics.served(command, result, time.perf_counter() - started, lock_waited)


def _audit(
    services: Services,
    peer: Peer,
    command: str,
    arguments: list[str] | str,
    response: Response,
    started: float,
    rule: str | None = None,
) -> None:
    """The command's line in the audit log; `rule`: the access rule that decided, if one did."""
    if services.audit is not None:
        result = "ok" if response.ok else response.error or "failed"
        services.audit.record(peer, command, arguments, result, (time.perf_counter() - started) * 1000, rule)
