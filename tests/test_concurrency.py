"""Many clients at once: every command answered once, state changes serialised, nothing lost on kill -9."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable

from berth.client import Client
from tests.daemon_proc import Berthd

CLIENTS = 64
COMMANDS_PER_CLIENT = 200
LOCK_SPAN = re.compile(r"lock=(\d+)-(\d+)")


def client_script(index: int) -> list[str]:
    """200 state-changing commands whose serial result is known: an app, its settings and its config."""
    app = f"c{index}"
    script = [f"apps:create {app}"]
    for step in range(COMMANDS_PER_CLIENT - 2):
        kind = step % 4
        if kind == 0:
            script.append(f"config:set {app} K{step % 7}={index}-{step}")
        elif kind == 1:
            script.append(f"apps:set {app} description step-{step}")
        elif kind == 2:
            script.append(f"config:set shared C{index}={step}")
        else:
            script.append(f"config:unset {app} K{(step + 3) % 7}")
    script.append(f"apps:set {app} timeout {index + 1}")
    return script


def serial_result(index: int) -> tuple[dict[str, str], str]:
    config: dict[str, str] = {}
    description = ""
    for line in client_script(index)[1:]:
        words = line.split()
        if words[0] == "config:set" and words[1] != "shared":
            key, _, value = words[2].partition("=")
            config[key] = value
        elif words[0] == "config:unset":
            config.pop(words[2], None)
        elif words[0] == "apps:set" and words[2] == "description":
            description = words[3]
    return config, description


def test_64_clients_200_state_changes_each(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--sync", "normal"])
    daemon.call("apps:create shared")
    answers: dict[int, list[bool]] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with Client(daemon.socket, timeout=120) as client:
                answers[index] = [client.call(line).ok for line in client_script(index)]
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors
    assert sorted(answers) == list(range(CLIENTS))
    for index in range(CLIENTS):
        assert len(answers[index]) == COMMANDS_PER_CLIENT
        assert all(answers[index]), index

    with Client(daemon.socket) as client:
        for index in range(CLIENTS):
            config, description = serial_result(index)
            assert client.call(f"config:show c{index}").data == config
            info = client.call(f"apps:info c{index}").data
            assert info["settings"]["description"] == description
            assert info["settings"]["timeout"] == index + 1
        shared = client.call("config:show shared").data
    last_shared_step = max(step for step in range(COMMANDS_PER_CLIENT - 2) if step % 4 == 2)
    assert shared == {f"C{i}": str(last_shared_step) for i in range(CLIENTS)}

    spans = sorted((int(a), int(b)) for a, b in LOCK_SPAN.findall(daemon.log()))
    assert len(spans) == CLIENTS * COMMANDS_PER_CLIENT + 1
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, "two state-changing commands held the lock at once"


def test_kill_9_loop_loses_no_reported_app(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd()
    created: set[str] = set()
    destroyed: set[str] = set()
    uncertain: set[str] = set()
    rng = random.Random(7)
    serial = 0
    for _round in range(6):
        stop = threading.Event()
        lock = threading.Lock()

        def worker(worker_id: int, stop: threading.Event = stop, lock: threading.Lock = lock) -> None:
            nonlocal serial
            try:
                with Client(daemon.socket, timeout=10) as client:
                    while not stop.is_set():
                        with lock:
                            serial += 1
                            name = f"k{serial}"
                            victim = rng.choice(sorted(created - destroyed)) if created - destroyed else None
                        with lock:
                            uncertain.add(name)
                        if client.call(f"apps:create {name}").ok:
                            with lock:
                                created.add(name)
                                uncertain.discard(name)
                        if victim and rng.random() < 0.3:
                            with lock:
                                uncertain.add(victim)
                            if client.call(f"apps:destroy {victim} --force").ok:
                                with lock:
                                    destroyed.add(victim)
                                    uncertain.discard(victim)
            except (OSError, ConnectionError):
                return

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3 + rng.random() * 0.5)
        daemon.kill()
        stop.set()
        for thread in threads:
            thread.join(10)
        daemon.start()
        names = set(daemon.call("apps:list").output.split())
        assert (created - destroyed - uncertain) <= names
        assert not (names & (destroyed - uncertain))
        # what is uncertain (sent, never answered) settles one way or the other now
        for name in list(uncertain):
            if name in names:
                created.add(name)
                destroyed.discard(name)
            else:
                destroyed.add(name)
        uncertain.clear()
    assert len(created) > 20
