"""Real system users for tests of who may do what: made with useradd, removed with userdel afterwards."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    extra_gid: int | None = None

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """`argv` as this user (with its groups), never as root."""
        return subprocess.run(
            argv, user=self.uid, group=self.gid, extra_groups=os.getgrouplist(self.name, self.gid),
            capture_output=True, text=True, timeout=30, cwd="/",
        )  # fmt: skip


def run_suffix() -> str:
    """A suffix of this test process's own: neither two xdist workers nor two test runs at once on one
    machine (CI and a developer's) ever add or remove the same user."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    return f"{os.environ.get('PYTEST_XDIST_WORKER', 'gw')}{hashlib.sha256(run.encode()).hexdigest()[:4]}"


def _names(stem: str) -> str:
    return f"{stem}{run_suffix()}"[:32]


@contextmanager
def system_users(*stems: str, extra_group: bool = False) -> Iterator[list[User]]:
    """Fresh system users (and, with `extra_group`, one extra group each is a member of)."""
    made: list[User] = []
    try:
        for stem in stems:
            name = _names(stem)
            subprocess.run(["userdel", "--remove", name], capture_output=True)
            subprocess.run(["groupdel", f"{name}x"], capture_output=True)
            extra: int | None = None
            options: list[str] = []
            if extra_group:
                subprocess.run(["groupadd", "--system", f"{name}x"], check=True)
                options = ["--groups", f"{name}x"]
            subprocess.run(["useradd", "--system", "--user-group", *options, name], check=True)
            entry = pwd.getpwnam(name)
            if extra_group:
                extra = grp.getgrnam(f"{name}x").gr_gid
            made.append(User(name, entry.pw_uid, entry.pw_gid, extra))
        yield made
    finally:
        for user in made:
            subprocess.run(["userdel", "--remove", user.name], capture_output=True)
            if user.extra_gid is not None:
                subprocess.run(["groupdel", f"{user.name}x"], capture_output=True)
