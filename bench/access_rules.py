"""What the access rules cost: `ping` round trips of a caller other than root, with 50 rules and with none.

Three berthds at once, each with its config: no rules; 50 rules of which 49 name other callers and the
50th, the bench's caller (its uid), allowing `ping`; and 50 rules that all name the caller, the first 49
for other commands, so that every request is judged against each of them before the 50th allows it.
The caller (uid `CALLER`, a forked child of the benchmark that changed its uid, so it must run as root)
pings the three in alternating blocks on one connection each. Every berthd's bound of commands per uid is
out of reach, so it is the rules that are timed. The goal (issue 15): p50 with 50 rules within 5% of none.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from bench.callers import OUT_OF_REACH_BOUND, Children, Control, can_switch_uid, open_to_every_uid
from bench.clients import PING, LineSocket, check_pong
from bench.processes import ServerProcess, Session
from bench.report import (
    LATENCY_HEADERS,
    Comparison,
    Goal,
    latency_row,
    percentile,
    print_comparisons,
    print_table,
    print_title,
)
from bench.timing import interleaved

CALLER = 4201
RULES = 50
WARMUP = 500
PINGS = 5_000
BLOCKS = 10
SERIES_TIME_LIMIT = 30.0

UNDER_5_PERCENT_APART = Goal("under 5% apart", lambda percent: abs(percent) < 5.0)
REFERENCE = Goal("(reference)")

# what the rules that do not decide grant: the commands a deploying user might be given, but never ping
GRANTS = [
    ["apps:*", "config:*", "ps:*", "run", "logs", "whoami", "access:check"],
    ["git:*", "upload:*", "jobs:*"],
    ["ps:start", "ps:stop", "ps:restart", "ps:report"],
    ["config:get", "config:show", "apps:info", "apps:list"],
]


def rule(index: int, caller: str, commands: list[str]) -> str:
    return f"""\
[[access.rule]]
name = "rule-{index}"
{caller}
commands = [{", ".join(f'"{c}"' for c in commands)}]
apps = ["team{index}-*", "{{user}}-{index}-*"]
daemons = ["local_docker"]
run_as_other = false
"""


def others_then_caller() -> str:
    """49 rules of other callers (by name, group or uid, none of them the bench's), then the caller's."""
    callers = [
        f'users = ["bench-user-{i}"]' if i % 3 == 0 else
        f'groups = ["bench-group-{i}"]' if i % 3 == 1 else
        f"uids = [{20_000 + i}]"
        for i in range(RULES - 1)
    ]  # fmt: skip
    others = [rule(i, who, GRANTS[i % len(GRANTS)]) for i, who in enumerate(callers)]
    return "\n".join([*others, rule(RULES - 1, f"uids = [{CALLER}]", ["ping", *GRANTS[0]])])


def caller_for_other_commands() -> str:
    """50 rules of the bench's caller: 49 that grant it other commands, then one that grants ping."""
    mine = f"uids = [{CALLER}]"
    others = [rule(i, mine, GRANTS[i % len(GRANTS)]) for i in range(RULES - 1)]
    return "\n".join([*others, rule(RULES - 1, mine, ["ping", *GRANTS[0]])])


CONFIGS = {
    "no rules": None,
    f"{RULES} rules, 49 of other callers": others_then_caller,
    f"{RULES} rules, 49 of the caller's for other commands": caller_for_other_commands,
}


def ping(conn: LineSocket, label: str) -> None:
    check_pong(conn.request(PING), label)


def timed_pings(servers: list[tuple[str, Path]], control: Control) -> list[list[float]]:
    with contextlib.ExitStack() as stack:
        pingers = [
            functools.partial(ping, stack.enter_context(LineSocket(path)), label) for label, path in servers
        ]
        for pinger in pingers:
            for _ in range(WARMUP):
                pinger()
        return interleaved(pingers, PINGS, BLOCKS, SERIES_TIME_LIMIT)


def start(session: Session, rules: str | None) -> ServerProcess:
    options = ["--socket-mode", "0666", *OUT_OF_REACH_BOUND]
    if rules is not None:
        config = session.new_dir("rules") / "berthd.toml"
        config.write_text(rules)
        options += ["--config", str(config)]
    return session.start_berthd(options=options)


def run(session: Session) -> None:
    print_title(
        f"access rules: ping round trips of uid {CALLER}, {RULES} rules vs none (ms)",
        f"{WARMUP} warm-up pings, then {PINGS} timed on one connection to each berthd, in {BLOCKS} "
        "alternating blocks;",
        "the rules that do not decide name other callers, or the caller for other commands.",
    )
    if not can_switch_uid():
        print("   skipped: the caller changes its uid, which needs root")
        return
    open_to_every_uid(session)
    servers = {label: start(session, make() if make else None) for label, make in CONFIGS.items()}
    try:
        for server in servers.values():
            server.wait_ready()
        with Children() as children:
            work = functools.partial(timed_pings, [(label, s.socket) for label, s in servers.items()])
            samples = dict(zip(servers, children.start(CALLER, work).result(), strict=True))
    finally:
        for server in servers.values():
            session.stop(server)
    print_table(LATENCY_HEADERS, [latency_row(label, timings, PINGS) for label, timings in samples.items()])
    none = samples["no rules"]
    comparisons = []
    for label, timings in samples.items():
        if label != "no rules":
            for q, goal in ((50, UNDER_5_PERCENT_APART), (99, REFERENCE)):
                apart = (percentile(timings, q) / percentile(none, q) - 1) * 100
                comparisons.append(Comparison(f"p{q} {label} vs no rules", apart, goal, unit="%"))
    print_comparisons(comparisons)
