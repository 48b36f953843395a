"""Image apps on the private test engine (scripts/with-engine.sh): containers through berthd against
the same engine calls made with the Docker SDK directly, and `daemons:list` with 1,000 deploy daemons.

One berthd (`--stop-timeout 1`) with the engine registered as its default deploy daemon, and one SDK
client on the same engine, in turn round by round (the order swapped every round), after warm-up:
- lifecycle: berthd `ps:start` (creates and starts the container, answers once it is RUNNING),
  `ps:stop`, `apps:destroy --force` (removes the container and its volume); the SDK
  `containers.create` + `start`, `stop(timeout=1)`, `remove` + the volume's `remove`. berthd needs
  `git:from-image` again before each round (destroy forgets the app): it touches no engine, so it is
  timed apart and left out of the comparison.
- kept container: the container made once, then only started and stopped (berthd `ps:start`,
  `ps:stop`; the SDK `start`, `stop(timeout=1)`).
The SDK's container gets the options berthd gave its own, read back from the engine: command, env
list, hostname, the volume at the same place, network mode, restart policy. The command exits 0 at
once on SIGTERM (a shell as PID 1 with a trap, waiting on a `sleep`), so a stop is the engine's work.

Then `daemons:list` with 1,000 registered daemons (docker-install, the engine's socket; registering
does not ask the engine) against `ping` as the floor, alternating in blocks, and with 1 daemon.

Without BERTH_TEST_DOCKER_HOST nothing starts: the benchmark says it skipped and how to run it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import msgspec
import psutil

from bench.clients import OK_PREFIX, PING, LineSocket, check_pong
from bench.processes import BenchError, ServerProcess, Session
from bench.report import (
    LATENCY_HEADERS,
    NO_GOAL,
    Comparison,
    Goal,
    latency_row,
    median,
    ms,
    percentile,
    print_comparisons,
    print_table,
    print_title,
)
from bench.timing import interleaved
from berth.client import Client

ENGINE_VAR = "BERTH_TEST_DOCKER_HOST"
UNAVAILABLE_VAR = "BERTH_TEST_DOCKER_UNAVAILABLE"  # with-engine.sh's reason when it had no engine
HOW_TO_RUN = "bash scripts/with-engine.sh .venv/bin/python -m bench docker"
IMAGE = "berth-test/busybox:1"
# PID 1 ignores a signal it has no handler for: the trap is the handler, and `wait` returns at once
COMMAND = ["sh", "-c", 'trap "exit 0" TERM; sleep 1000 & wait']
NC_URL = "http://nextcloud.local"
ENGINE_DAEMON = "bench-engine"
LIFECYCLE_APP = "bench-docker-cycle"
KEPT_APP = "bench-docker-kept"
SDK_NAME = "bench_sdk_container"  # the SDK's container, and its volume with `_data`
SDK_LABEL = "berthd.bench"  # on the SDK's containers, so that the clean-up finds them
STOP_TIMEOUT = 1  # seconds, berthd's --stop-timeout and the SDK's stop(timeout=)
WARMUP = 2  # rounds each way, not counted
ROUNDS = 10
SECTION_TIME_LIMIT = 30.0  # each comparison stops after the round that passes it
RUNNING_TIMEOUT = 30.0
POLL = 0.005
IO_TIMEOUT = 60.0
DAEMONS = 1_000
LIST_CALLS = 300
SMALL_LIST_CALLS = 200
BLOCKS = 10
LIST_TIME_LIMIT = 30.0
OVERHEAD_GOAL = Goal("under 10 %", lambda percent: percent < 10)

START, STOP, REMOVE, PREPARE = "start", "stop", "remove", "prepare"
COMPARED_PHASES = (START, STOP, REMOVE)

Timings = dict[str, list[float]]


@dataclass
class Side:
    """One way of doing the rounds (berthd's or the SDK's): its timed phases, filled as they run."""

    round_once: Callable[[], dict[str, float]]
    timings: Timings = field(default_factory=dict)

    def run_round(self, counted: bool) -> None:
        phases = self.round_once()
        if counted:
            for phase, seconds in phases.items():
                self.timings.setdefault(phase, []).append(seconds)

    def totals(self, phases: Sequence[str]) -> list[float]:
        rounds = len(self.timings[phases[0]])
        return [sum(self.timings[phase][index] for phase in phases) for index in range(rounds)]


def mean(samples: Sequence[float]) -> float:
    return sum(samples) / len(samples)


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


# berthd


def call_ok(client: Client, command: Sequence[str]) -> Any:
    """The `data` of a command that has to succeed."""
    answer = client.call(list(command))
    if not answer.ok:
        raise BenchError(f"berthd refused {' '.join(command)}: {answer.output}")
    return answer.data


def start_running(client: Client, app: str) -> None:
    """`ps:start`, then `ps:report` until the container is RUNNING, should the answer come before."""
    rows = call_ok(client, ["ps:start", app])
    deadline = time.perf_counter() + RUNNING_TIMEOUT
    while not rows or any(row["state"] != "RUNNING" for row in rows):
        if time.perf_counter() > deadline:
            raise BenchError(f"{app} not RUNNING within {RUNNING_TIMEOUT:.0f} s: {rows}")
        time.sleep(POLL)
        rows = call_ok(client, ["ps:report", app])


def deploy(client: Client, app: str) -> None:
    call_ok(client, ["git:from-image", app, IMAGE, "--", *COMMAND])


def container_name(app: str) -> str:
    return f"nc_app_{app}"  # berthd.deploy.exapp's


def check_status(engine: docker.DockerClient, name: str, wanted: str) -> None:
    status = engine.api.inspect_container(name)["State"]["Status"]
    if status != wanted:
        raise BenchError(f"container {name} is {status}, expected {wanted}")


def check_gone(engine: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        engine.api.inspect_container(name)
        raise BenchError(f"container {name} is still there")


def berthd_lifecycle(client: Client, engine: docker.DockerClient) -> dict[str, float]:
    name = container_name(LIFECYCLE_APP)
    phases = {PREPARE: timed(lambda: deploy(client, LIFECYCLE_APP))}
    phases[START] = timed(lambda: start_running(client, LIFECYCLE_APP))
    check_status(engine, name, "running")
    phases[STOP] = timed(lambda: call_ok(client, ["ps:stop", LIFECYCLE_APP]))
    check_status(engine, name, "exited")
    phases[REMOVE] = timed(lambda: call_ok(client, ["apps:destroy", LIFECYCLE_APP, "--force"]))
    check_gone(engine, name)
    return phases


def berthd_kept(client: Client, engine: docker.DockerClient) -> dict[str, float]:
    name = container_name(KEPT_APP)
    phases = {START: timed(lambda: start_running(client, KEPT_APP))}
    check_status(engine, name, "running")
    phases[STOP] = timed(lambda: call_ok(client, ["ps:stop", KEPT_APP]))
    check_status(engine, name, "exited")
    return phases


# the SDK


def sdk_options(engine: docker.DockerClient, berthd_container: str) -> dict[str, Any]:
    """`containers.create`'s options as berthd's runner gives them, from its container's settings."""
    attrs = engine.api.inspect_container(berthd_container)
    config, host = attrs["Config"], attrs["HostConfig"]
    [mount] = [m for m in attrs["Mounts"] if m["Type"] == "volume"]
    return {
        "command": config["Cmd"],
        "name": SDK_NAME,
        "hostname": config["Hostname"],
        "environment": config["Env"],
        "volumes": {f"{SDK_NAME}_data": {"bind": mount["Destination"], "mode": "rw"}},
        "network_mode": host["NetworkMode"],
        "restart_policy": {"Name": host["RestartPolicy"]["Name"]},
        "labels": {SDK_LABEL: "sdk"},
        "detach": True,
    }


def sdk_create_start(engine: docker.DockerClient, options: dict[str, Any]) -> Any:
    container = engine.containers.create(IMAGE, **options)
    container.start()
    return container


def sdk_lifecycle(engine: docker.DockerClient, options: dict[str, Any]) -> dict[str, float]:
    containers: list[Any] = []
    phases = {START: timed(lambda: containers.append(sdk_create_start(engine, options)))}
    check_status(engine, SDK_NAME, "running")
    [container] = containers
    phases[STOP] = timed(lambda: container.stop(timeout=STOP_TIMEOUT))
    check_status(engine, SDK_NAME, "exited")

    def remove() -> None:
        container.remove(force=True)
        engine.volumes.get(f"{SDK_NAME}_data").remove(force=True)

    phases[REMOVE] = timed(remove)
    check_gone(engine, SDK_NAME)
    return phases


def sdk_kept(engine: docker.DockerClient, container: Any) -> dict[str, float]:
    phases = {START: timed(container.start)}
    check_status(engine, SDK_NAME, "running")
    phases[STOP] = timed(lambda: container.stop(timeout=STOP_TIMEOUT))
    check_status(engine, SDK_NAME, "exited")
    return phases


# the comparisons


def alternate(first: Side, second: Side) -> None:
    """`WARMUP` rounds each, then up to `ROUNDS` counted, the order swapped every round."""
    deadline = time.perf_counter() + SECTION_TIME_LIMIT
    for index in range(WARMUP + ROUNDS):
        counted = index >= WARMUP
        if counted and time.perf_counter() > deadline:
            break
        for side in (first, second) if index % 2 == 0 else (second, first):
            side.run_round(counted)


@dataclass(frozen=True)
class ContainerResults:
    lifecycle: tuple[Side, Side]
    kept: tuple[Side, Side]
    berthd_fds: tuple[int, int]  # berthd's open file descriptors before and after the rounds


def compare_containers(
    berthd: ServerProcess, client: Client, engine: docker.DockerClient
) -> ContainerResults:
    fds_before = psutil.Process(berthd.pid).num_fds()
    deploy(client, LIFECYCLE_APP)
    start_running(client, LIFECYCLE_APP)
    options = sdk_options(engine, container_name(LIFECYCLE_APP))
    call_ok(client, ["apps:destroy", LIFECYCLE_APP, "--force"])
    cycle = (
        Side(lambda: berthd_lifecycle(client, engine)),
        Side(lambda: sdk_lifecycle(engine, options)),
    )
    alternate(*cycle)

    deploy(client, KEPT_APP)
    start_running(client, KEPT_APP)
    call_ok(client, ["ps:stop", KEPT_APP])
    container = engine.containers.create(IMAGE, **options)
    kept = (
        Side(lambda: berthd_kept(client, engine)),
        Side(lambda: sdk_kept(engine, container)),
    )
    alternate(*kept)
    return ContainerResults(cycle, kept, (fds_before, psutil.Process(berthd.pid).num_fds()))


def phase_rows(berthd: Side, sdk: Side, phases: dict[str, Sequence[str]]) -> list[list[str]]:
    rows = []
    for label, included in phases.items():
        ours, theirs = berthd.totals(included), sdk.totals(included)
        rows.append([label, str(len(ours)), ms(median(ours)), ms(mean(ours)), ms(median(theirs)),
                     ms(mean(theirs)), ms(mean(ours) - mean(theirs)), f"{median(ours) / median(theirs):.3f}",
                     f"{mean(ours) / mean(theirs):.3f}"])  # fmt: skip
    return rows


def print_containers(results: ContainerResults) -> None:
    (cycle_berthd, cycle_sdk), (kept_berthd, kept_sdk) = results.lifecycle, results.kept
    headers = ["phase (ms)", "n", "berthd p50", "berthd mean", "SDK p50", "SDK mean", "more, mean",
               "p50 ratio", "mean ratio"]  # fmt: skip
    print("\n   lifecycle: created, started, stopped and removed every round")
    print_table(
        headers,
        phase_rows(cycle_berthd, cycle_sdk, {
            "ps:start | create + start": (START,),
            "ps:stop | stop": (STOP,),
            "apps:destroy --force | remove + volume remove": (REMOVE,),
            "all three": COMPARED_PHASES,
        }),
    )  # fmt: skip
    prepare = cycle_berthd.timings[PREPARE]
    print(f"   berthd's git:from-image before each round (no engine call): p50 {ms(median(prepare))} ms")
    print("\n   kept container: started and stopped every round")
    print_table(
        headers,
        phase_rows(kept_berthd, kept_sdk, {
            "ps:start | start": (START,), "ps:stop | stop": (STOP,), "both": (START, STOP),
        }),
    )  # fmt: skip
    before, after = results.berthd_fds
    print(f"   berthd's open file descriptors: {before} before the rounds, {after} after")

    def overhead(berthd: Side, sdk: Side, phases: Sequence[str]) -> float:
        return (mean(berthd.totals(phases)) / mean(sdk.totals(phases)) - 1) * 100

    print_comparisons(
        [
            Comparison("berthd over the SDK: create+start+stop+remove, mean",
                       overhead(cycle_berthd, cycle_sdk, COMPARED_PHASES), OVERHEAD_GOAL, "%"),
            Comparison("berthd over the SDK: start+stop of a kept container, mean",
                       overhead(kept_berthd, kept_sdk, (START, STOP)), OVERHEAD_GOAL, "%"),
        ]
    )  # fmt: skip


# daemons:list


@dataclass(frozen=True)
class ListResults:
    ping: list[float]
    small: list[float]  # daemons:list with the engine's daemon alone
    large: list[float]  # with DAEMONS
    answer_bytes: int
    register_seconds: float


def list_line(conn: LineSocket) -> bytes:
    answer = conn.request(b"daemons:list\n")
    if not answer.startswith(OK_PREFIX):
        raise BenchError(f"berthd answered daemons:list with {answer[:300]!r}")
    return answer


def register_daemons(client: Client, socket_path: str, count: int) -> float:
    """Seconds per registration, on average."""
    started = time.perf_counter()
    for index in range(count):
        call_ok(client, ["daemons:register", f"bench-{index:04d}", f"Bench {index}", "docker-install",
                         "http", socket_path, NC_URL])  # fmt: skip
    return (time.perf_counter() - started) / count


def compare_listing(berthd: ServerProcess, client: Client, socket_path: str) -> ListResults:
    with LineSocket(berthd.socket, timeout=IO_TIMEOUT) as conn:

        def ping() -> None:
            check_pong(conn.request(PING), "berthd")

        def listing() -> None:
            list_line(conn)

        _, small = interleaved([ping, listing], SMALL_LIST_CALLS, BLOCKS, LIST_TIME_LIMIT)
        register_seconds = register_daemons(client, socket_path, DAEMONS - 1)
        answer = list_line(conn)
        listed = msgspec.json.decode(answer)["data"]
        if len(listed) != DAEMONS:
            raise BenchError(f"daemons:list shows {len(listed)} daemons, not {DAEMONS}")
        pings, large = interleaved([ping, listing], LIST_CALLS, BLOCKS, LIST_TIME_LIMIT)
    return ListResults(pings, small, large, len(answer) + 1, register_seconds)


def print_listing(results: ListResults) -> None:
    print_table(
        LATENCY_HEADERS,
        [
            latency_row("ping", results.ping, LIST_CALLS),
            latency_row("daemons:list, 1 daemon", results.small, SMALL_LIST_CALLS),
            latency_row(f"daemons:list, {DAEMONS:,} daemons", results.large, LIST_CALLS),
        ],
    )
    print(
        f"   the answer with {DAEMONS:,} daemons: {results.answer_bytes:,} bytes; "
        f"daemons:register took {ms(results.register_seconds)} ms each on average"
    )
    print_comparisons(
        [
            Comparison(f"daemons:list of {DAEMONS:,} / ping, p50",
                       median(results.large) / median(results.ping), NO_GOAL),
            Comparison(f"daemons:list of {DAEMONS:,} / ping, p99",
                       percentile(results.large, 99) / percentile(results.ping, 99), NO_GOAL),
        ]
    )  # fmt: skip


# set-up and clean-up


@contextlib.contextmanager
def engine_client(host: str) -> Iterator[docker.DockerClient]:
    engine = docker.DockerClient(base_url=host, timeout=IO_TIMEOUT)
    try:
        try:
            engine.images.get(IMAGE)
        except docker.errors.ImageNotFound:
            raise BenchError(
                f"the engine at {host} has no {IMAGE}: start it with scripts/with-engine.sh"
            ) from None
        yield engine
    finally:
        engine.close()


def remove_leftovers(engine: docker.DockerClient) -> None:
    """Every container and volume the benchmark made, whatever state it was left in; what cannot be
    removed is said, not raised, so that it does not hide why the benchmark stopped."""
    names = [container_name(LIFECYCLE_APP), container_name(KEPT_APP)]
    volumes = [f"{name}_data" for name in names] + [f"{SDK_NAME}_data"]
    try:
        containers = engine.containers.list(all=True, filters={"label": SDK_LABEL})
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):
                containers.append(engine.containers.get(name))
        for container in containers:
            container.remove(force=True)
        for volume in volumes:
            with contextlib.suppress(docker.errors.NotFound):
                engine.volumes.get(volume).remove(force=True)
    except (docker.errors.DockerException, OSError) as exc:
        print(f"bench: could not remove the containers and volumes {', '.join(names + volumes)} "
              f"(the SDK's labelled {SDK_LABEL}): {exc}", file=sys.stderr)  # fmt: skip


def print_skipped() -> None:
    reason = os.environ.get(UNAVAILABLE_VAR, f"{ENGINE_VAR} is not set")
    print_title(
        "image apps on a Docker engine: skipped",
        f"no test engine ({reason}); nothing was started.",
        f"Run it with: {HOW_TO_RUN}",
    )


def run(session: Session, profile_to: Path | None = None) -> None:
    host = os.environ.get(ENGINE_VAR)
    if not host:
        print_skipped()
        return
    if not host.startswith("unix://"):
        raise BenchError(f"{ENGINE_VAR}={host}: the benchmark talks to an engine on a UNIX socket only")
    socket_path = host.removeprefix("unix://")
    print_title(
        "image apps on the test engine: berthd against the Docker SDK, and daemons:list",
        f"{IMAGE} running {' '.join(COMMAND[:2])} '{COMMAND[2]}' (exits 0 on SIGTERM at once);",
        f"berthd --stop-timeout {STOP_TIMEOUT}, the SDK's stop(timeout={STOP_TIMEOUT}); {WARMUP} warm-up "
        f"rounds, then up to {ROUNDS}, berthd and the SDK in turn (order swapped each round);",
        "the SDK's container has the options berthd gave its own (command, env, hostname, volume, "
        "network mode, restart policy).",
    )
    try:
        with engine_client(host) as engine:
            berthd = session.start_berthd(
                profile_to=profile_to, options=["--stop-timeout", str(STOP_TIMEOUT)]
            )
            try:
                berthd.wait_ready()
                with Client(berthd.socket, timeout=IO_TIMEOUT) as client:
                    call_ok(client, ["daemons:register", ENGINE_DAEMON, "Bench engine", "docker-install",
                                     "http", socket_path, NC_URL, "--set-default"])  # fmt: skip
                    containers = compare_containers(berthd, client, engine)
                    listing = compare_listing(berthd, client, socket_path)
            finally:
                session.stop(berthd)
                remove_leftovers(engine)
    except docker.errors.DockerException as exc:
        raise BenchError(f"the engine at {host} failed: {exc}") from None
    print_containers(containers)
    print(f"\n   daemons:list with {DAEMONS:,} registered daemons, against ping (ms)")
    print_listing(listing)
