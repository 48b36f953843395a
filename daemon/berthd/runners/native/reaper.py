"""Orphans of berthd's process groups come back to berthd (a child subreaper) and are reaped here.

Each unit's shim is a subreaper itself, so the orphans of a unit go to its shim, which reaps them; one
reaches berthd only when its shim was killed from outside (root's `kill -9`). Without this, such an
orphan would be re-parented to PID 1, which on some hosts (containers, microVMs) never reaps it.
berthd only reaps zombies in the process groups its programs lead, and never the shims (each has its
own waiter), so other libraries' children are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from pathlib import Path

import trio

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def become_subreaper() -> bool:
    return bool(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _state_and_group(pid: int) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


class Reaper:
    def __init__(self) -> None:
        self.groups: set[int] = set()  # the programs' process groups (their leaders' pids)

    def sweep(self) -> int:
        """Reap the zombies in our groups, leaders included (a program's waiter is its shim, which is
        in a session of its own: never reaped here); how many were reaped."""
        reaped = 0
        for pid in _children():
            info = _state_and_group(pid)
            if info and info[0] == "Z" and info[1] in self.groups:
                try:
                    os.waitpid(pid, os.WNOHANG)
                    reaped += 1
                except ChildProcessError:
                    pass
        return reaped

    def group_alive(self, pgid: int) -> bool:
        """Is anything but zombies left in the group? Asked once its leader was reaped: our zombies in
        it are reaped first, then one `killpg(pgid, 0)` answers (ESRCH: empty). A zombie still counts
        while its parent lives, but then so does the parent. Never a scan of /proc."""
        self.sweep()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            async for _ in signals:
                self.sweep()
