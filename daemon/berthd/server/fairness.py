"""Fairness between callers: a token bucket of commands per uid, shared by all of that uid's connections.

Each uid but root may run `--command-burst-per-uid` commands at once and `--commands-per-second-per-uid`
after that; a line over the bound is not run and is answered `busy`, with the time its caller should wait.
Answering a flood must not cost berthd what running it would, so a connection told to wait is also made
to: berthd reads its next line only once that time has passed (a client that ignores the answer and keeps
sending just fills its own socket buffer). The callers of one uid refused at once are given turns one token
apart, so they do not all wake together to find one token and be refused again; a flood thus costs about
one refusal per token, whatever the number of connections behind it.

A uid's bucket lives while the uid holds a connection; once the last one is gone it is dropped as soon as
it is full again (a full bucket is what a new uid gets), so that reconnecting never refills it and only the
uids active in the last few seconds take any memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from berth.messages import TOO_MANY_COMMANDS, Response
from berthd.config import Config

ROOT_UID = 0
WHOLE_TOKEN = 1.0 - 1e-9  # a caller back exactly at its turn finds its token, whatever the float rounding


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float  # when `tokens` was counted
    last_turn: float = -math.inf  # the latest time a refused caller of this uid was told to come back


class CommandRates:
    """One token bucket per uid (root has none: it is never limited). Times are `time.perf_counter()`'s.

    The bounds are read from `config` at each command, so a reload (SIGHUP) changes them at once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._buckets: dict[int, _Bucket] = {}
        self._leaving: set[int] = set()  # uids with no connection left whose bucket is not full yet

    @property
    def rate(self) -> float:
        return self.config.commands_per_second_per_uid

    @property
    def burst(self) -> int:
        return self.config.command_burst_per_uid

    def take(self, uid: int, now: float) -> float | None:
        """One command of `uid` at `now`: None when it may run, else the seconds until its turn."""
        if uid == ROOT_UID:
            return None
        config = self.config
        burst = config.command_burst_per_uid
        bucket = self._buckets.get(uid)
        if bucket is None:
            self._buckets[uid] = _Bucket(burst - 1.0, now)
            return None
        rate = config.commands_per_second_per_uid
        tokens = bucket.tokens + (now - bucket.stamp) * rate
        if tokens > burst:
            tokens = burst
        bucket.stamp = now
        if tokens >= WHOLE_TOKEN:
            bucket.tokens = tokens - 1.0
            return None
        bucket.tokens = tokens
        turn = max(now + (1.0 - tokens) / rate, bucket.last_turn + 1.0 / rate)
        bucket.last_turn = turn
        return turn - now

    def forget(self, uid: int, now: float) -> None:
        """`uid` has no connection left: its bucket goes once full; so do those of others that left before."""
        self._leaving.add(uid)
        for leaving in list(self._leaving):
            bucket = self._buckets.get(leaving)
            if bucket is None or bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst:
                self._buckets.pop(leaving, None)
                self._leaving.discard(leaving)

    def connected(self, uid: int) -> None:
        """`uid` holds a connection again: its bucket stays."""
        self._leaving.discard(uid)

    def __contains__(self, uid: int) -> bool:
        return uid in self._buckets

    def __len__(self) -> int:
        return len(self._buckets)


class Pace:
    """One connection's share of its uid's bucket, and when berthd may read that connection's next line."""

    __slots__ = ("rates", "uid", "resume_at")

    def __init__(self, rates: CommandRates, uid: int) -> None:
        self.rates = rates
        self.uid = uid
        self.resume_at = 0.0  # perf_counter() time before which the next line waits; 0: none is due

    def refusal(self, now: float) -> Response | None:
        """None when the caller may run a command at `now`; else the `busy` answer, and the wait recorded."""
        wait = self.rates.take(self.uid, now)
        if wait is None:
            return None
        shown = max(0.01, math.ceil(wait * 100 - 1e-6) / 100)  # hundredths, rounded up: never "0.00 s"
        self.resume_at = now + shown
        rates = self.rates
        return Response(
            False,
            f"{TOO_MANY_COMMANDS}{self.uid} (limit {rates.rate:.10g} a second, burst {rates.burst}):"
            f" try again in {shown:.2f} s",
            error="busy",
        )

    def rest(self) -> float:
        """Seconds the connection must still wait before its next line (and the wait is then used up)."""
        resume_at, self.resume_at = self.resume_at, 0.0
        return max(0.0, resume_at - time.perf_counter())
