"""Callers other than root: forked children of the benchmark that change their uid (no account needed:
SO_PEERCRED reports the number), for what berthd does per caller (fairness, access rules).

The benchmark must run as root to fork them; each child does one piece of work and sends its result
back through a pipe, and it is killed on the way out if it has not ended by then. A child that loops
until told to stop (`Child.stop`) polls its control pipe (`Control`) and also has its own time limit.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import stat
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from bench.processes import BenchError, Session

T = TypeVar("T")
RESULT_TIMEOUT = 120.0
# berthd's bound of commands per uid, set so high that no benchmark reaches it
OUT_OF_REACH_BOUND = ["--commands-per-second-per-uid", "1e12", "--command-burst-per-uid", "1000000000000"]
_fork = multiprocessing.get_context("fork")


class Control:
    """The child's end of its control pipe: has the benchmark said stop?"""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def fileno(self) -> int:
        return self.conn.fileno()

    def stopped(self) -> bool:
        return self.conn.poll()


def _child(uid: int, work: Callable[[Control], object], conn: Connection) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    conn.send(work(Control(conn)))


class Child(Generic[T]):
    """`work(control)` running as `uid` in a forked child, its result to be collected once."""

    def __init__(self, uid: int, work: Callable[[Control], T]) -> None:
        self._conn, child_end = _fork.Pipe()
        self._process = _fork.Process(target=_child, args=(uid, work, child_end), daemon=True)
        self._process.start()
        child_end.close()

    def stop(self) -> None:
        """Tell a child that loops to end (what it has measured is then its result)."""
        with contextlib.suppress(OSError):
            self._conn.send(None)

    def result(self, timeout: float = RESULT_TIMEOUT) -> T:
        if not self._conn.poll(timeout):
            raise BenchError(f"a child running as another uid gave no result within {timeout:.0f} s")
        try:
            result: T = self._conn.recv()
        except EOFError:
            self._process.join(1.0)
            raise BenchError(f"a child running as another uid died (exit {self._process.exitcode})") from None
        self._process.join(RESULT_TIMEOUT)
        return result

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()


class Children:
    """Children started with `start(uid, work)`; any still running at the end of the `with` is killed."""

    def __init__(self) -> None:
        self._started: list[Child[Any]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self._started:
            child.kill()

    def start(self, uid: int, work: Callable[[Control], T]) -> Child[T]:
        child = Child(uid, work)
        self._started.append(child)
        return child


def can_switch_uid() -> bool:
    return os.geteuid() == 0


def open_to_every_uid(session: Session) -> None:
    """Let other uids reach sockets in the session's folders (mkdtemp makes its root 0700)."""
    mode = stat.S_IMODE(session.root.stat().st_mode)
    session.root.chmod(mode | 0o711)
