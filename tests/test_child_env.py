"""What an app's process starts with: its environment (built, never berthd's own), its user (a name or a
numeric id), its working directory (confined), PORT for Procfile types, and mount folders that no link
can redirect."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from berthd.store import modes
from tests.daemon_proc import Berthd
from tests.users import NEEDS_ROOT

MARKER = "BERTH_TEST_LEAK_MARKER"
BERTHD_ENV = {MARKER: "leaked", "MAKEFLAGS": "-j8", "PWD": "relative/pwd", "SECRET_TOKEN": "s3cret"}
ENV_SCRIPT = "#!/bin/sh\nexec /usr/bin/env\n"


def script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def wait_for(check: Callable[[], object], timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
    return result


def run_env(daemon: Berthd, app: str) -> dict[str, str]:
    answer = daemon.call(f"run {app}")
    assert answer.ok, answer.output
    text = (Path(answer.data["output_dir"]) / "stdout.txt").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# mount folders: made and handed over through descriptors


def _victim(tmp_path: Path) -> tuple[Path, os.stat_result]:
    """A root-owned folder outside the app that a redirected mkdir or chown would change."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    return victim, victim.stat()


def _unchanged(victim: Path, before: os.stat_result) -> None:
    after = victim.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (
        before.st_uid, before.st_gid, stat.S_IMODE(before.st_mode),
    )  # fmt: skip
    assert list(victim.iterdir()) == []


@NEEDS_ROOT
@pytest.mark.parametrize("moment", ["before data is opened", "after data is opened"])
def test_a_link_swapped_in_while_a_mount_is_made_redirects_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """The attack at its worst moments: the app's user (who owns the outer mount) swaps the folder on
    the way to a nested mount for a link to a folder of root's, just before berthd opens it, or just
    after (when a path-based mkdir and chown of `data/inner` would land in root's folder)."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    outer = app_dir / "mounts" / "data"
    modes.make_mount(app_dir, ("data",), os.getegid(), 65534, 65534)  # the outer mount: the user's
    victim, before = _victim(tmp_path)
    real_mkdir = os.mkdir
    when = "data" if moment == "before data is opened" else "inner"
    swapped: list[str] = []

    def swap() -> None:
        outer.rename(app_dir / "mounts" / "data.moved")
        outer.symlink_to(victim)
        swapped.append(when)

    def mkdir_and_swap(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if path == when == "inner":
            swap()
        try:
            real_mkdir(path, mode, dir_fd=dir_fd)
        finally:
            if path == when == "data":
                swap()

    monkeypatch.setattr(os, "mkdir", mkdir_and_swap)
    if when == "data":
        with pytest.raises(modes.NotAFolder):
            modes.make_mount(app_dir, ("data", "inner"), os.getegid(), 65534, 65534)
    else:  # made where berthd had looked: in the folder it opened, wherever that was moved to
        modes.make_mount(app_dir, ("data", "inner"), os.getegid(), 65534, 65534)
        assert (app_dir / "mounts" / "data.moved" / "inner").stat().st_uid == 65534
    monkeypatch.undo()
    assert swapped == [when]
    _unchanged(victim, before)


@NEEDS_ROOT
def test_a_link_planted_at_the_mount_itself_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    modes.make_mount(app_dir, ("data",), os.getegid(), 65534, 65534)
    victim, before = _victim(tmp_path)
    real_mkdir = os.mkdir

    def mkdir_then_plant(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if path == "inner":  # made, not yet opened: replaced by a link to root's folder
            os.rmdir(path, dir_fd=dir_fd)
            os.symlink(victim, path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir_then_plant)
    with pytest.raises(modes.NotAFolder):
        modes.make_mount(app_dir, ("data", "inner"), os.getegid(), 65534, 65534)
    monkeypatch.undo()
    _unchanged(victim, before)


ATTACKER = """
import os, sys, time
mounts, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
data, turn = os.path.join(mounts, "data"), 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    turn += 1
    spare = os.path.join(mounts, f"data.{turn}")  # never stuck on a spare left behind
    try:
        os.rename(data, spare)
        os.symlink(victim, data)
        os.unlink(data)
        os.rename(spare, data)
    except OSError:
        pass
"""


@NEEDS_ROOT
def test_a_user_racing_links_against_mount_creation_never_wins(tmp_path: Path) -> None:
    """A real race, bounded: another process (the app's user, who owns the outer mount) flips it
    between a real folder and a link to root's, on the other core, while berthd makes and hands
    over a mount nested in it, again and again."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    mounts = app_dir / "mounts"
    modes.make_mount(app_dir, ("data",), os.getegid(), 65534, 65534)
    victim, before = _victim(tmp_path)
    attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, str(mounts), str(victim), "3"])
    outcomes = {"made": 0, "refused": 0}
    try:
        deadline = time.monotonic() + 3.0
        for attempt in range(20000):
            if time.monotonic() > deadline:
                break
            try:
                modes.make_mount(app_dir, ("data", f"inner{attempt}"), os.getegid(), 65534, 65534)
                outcomes["made"] += 1
            except modes.NotAFolder:
                outcomes["refused"] += 1
    finally:
        attacker.wait(10)
    assert outcomes["refused"] > 0, outcomes  # the attacker did land inside the window, often
    _unchanged(victim, before)
