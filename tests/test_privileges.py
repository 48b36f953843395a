"""Processes run with the app user's rights from the first step: the working directory is entered as
that user."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd
from tests.users import NEEDS_ROOT, User, system_users

pytestmark = NEEDS_ROOT


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    with system_users("bpriv", extra_group=True) as (made,):
        yield made


@pytest.fixture
def daemon(start_berthd: Callable[..., Berthd], reachable_tmp: Path) -> Berthd:
    return start_berthd(root=reachable_tmp)  # a data dir the app's user may reach


def show_where(daemon: Berthd, app: str, user: User, cwd: str) -> None:
    answer = daemon.call(
        [
            "apps:from-local",
            app,
            "/bin/sh",
            "--user",
            user.name,
            "--cwd",
            cwd,
            "--",
            "-c",
            'echo "$(pwd) $(/usr/bin/id -u)"',
        ]
    )
    assert answer.ok, answer.output


def test_a_user_process_given_a_folder_only_root_may_enter_does_not_start(daemon: Berthd, user: User) -> None:
    assert stat.S_IMODE(os.stat("/root").st_mode) & 0o005 == 0  # the host's /root: closed to others
    show_where(daemon, "nosy", user, "/root")
    answer = daemon.call("run nosy")
    assert answer.ok is False
    assert f"cannot enter working directory /root as {user.name}: Permission denied" in answer.output
    assert daemon.call("ps:start nosy").ok
    report = daemon.call("ps:report nosy").data
    assert report[0]["pid"] is None
    assert f"cannot enter working directory /root as {user.name}" in str(report[0]["last_error"])
    daemon.call("ps:stop nosy")


def test_a_user_process_starts_in_a_folder_it_may_enter(
    daemon: Berthd, user: User, reachable_tmp: Path
) -> None:
    folder = reachable_tmp / "open"
    folder.mkdir(mode=0o755)
    show_where(daemon, "polite", user, str(folder))
    answer = daemon.call("run polite")
    assert answer.ok, answer.output
    assert (Path(answer.data["output_dir"]) / "stdout.txt").read_text() == f"{folder} {user.uid}\n"


def test_without_the_exec_helper_the_folder_is_entered_as_the_user_too(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, user: User
) -> None:
    no_compiler = reachable_tmp / "empty-bin"
    no_compiler.mkdir()
    daemon = start_berthd("fallback", root=reachable_tmp, env={"PATH": str(no_compiler)})
    show_where(daemon, "nosy", user, "/root")
    answer = daemon.call("run nosy")
    assert f"cannot enter working directory /root as {user.name}: Permission denied" in answer.output
    folder = reachable_tmp / "open"
    folder.mkdir(mode=0o755)
    show_where(daemon, "polite", user, str(folder))
    answer = daemon.call("run polite")
    assert (Path(answer.data["output_dir"]) / "stdout.txt").read_text() == f"{folder} {user.uid}\n"
    assert "processes are started with preexec_fn" in daemon.log()
