"""berthd as `make run` starts it: relative flags, from the project's folder. Every path it stores and
hands out is absolute, so what it deployed from git, an upload or an archive runs (`run`, `ps:start`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.client import Client
from berth.messages import Response
from berthd.config import load_config
from tests.daemon_proc import ROOT, Berthd

VENV = Path(sys.prefix)
MAKE = shutil.which("make")


def make_run_command() -> str:
    """The berthd line of the Makefile's `run` recipe, as it stands."""
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "the Makefile has no run target"
    lines = [line.strip() for line in recipe.group(1).splitlines()]
    return next(line for line in lines if "berthd" in line)


def test_make_run_passes_relative_paths() -> None:
    """What this file tests is what `make run` does: relative flags (else the test proves nothing)."""
    command = make_run_command()
    for flag in ("--socket ./run/", "--data-dir ./var", "--log-file ./var/"):
        assert flag in command, command


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A folder laid out like the project (its Makefile and pyproject.toml; the venv is this one), with
    berthd started in it by `make run` itself; stopped (SIGTERM to make's process group) at the end."""
    if MAKE is None or not (VENV / "bin" / "berthd").exists():
        pytest.skip("needs make and berthd installed in the venv running the tests")
    checksum = subprocess.run(["cksum", str(ROOT / "pyproject.toml")], capture_output=True, text=True)
    if not (VENV / f".installed-{checksum.stdout.split()[0]}").exists():
        pytest.skip("the venv running the tests was not made by `make setup`: `make run` would install one")
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, folder / name)
    os.utime(folder / "pyproject.toml", (0, 0))  # older than the venv's stamp: `setup` has nothing to do
    with open(tmp_path / "make.log", "wb") as log:
        make = subprocess.Popen(
            [MAKE, "--no-print-directory", "run", f"VENV={VENV}"],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MAKEFLAGS": "", "BERTH_TEST_MARKER": "from-the-shell"},
        )
    try:
        _wait_listening(folder / "run" / "berthd.sock", make, tmp_path / "make.log")
        yield folder
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()


def _wait_listening(path: Path, make: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if make.poll() is not None:
            raise RuntimeError(f"make run exited with {make.returncode}:\n{log.read_text()}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"berthd did not listen within {timeout} s:\n{log.read_text()}")


def call(project: Path, command: str | list[str]) -> Response:
    """From the project's folder, by the relative socket path `make run` prints, as a user would."""
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with Client("./run/berthd.sock", timeout=60) as client:
            return client.call(command)
    finally:
        os.chdir(cwd)


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def run_and_start(project: Path, app: str) -> dict[str, Any]:
    """`run` and `ps:start` both succeed; what the run printed (KEY=VALUE lines) is returned."""
    answer = call(project, f"run {app}")
    assert answer.ok, answer.output
    output_dir = Path(answer.data["output_dir"])
    assert output_dir.is_absolute() and output_dir.is_relative_to(project / "var"), output_dir
    printed = dict(
        line.split("=", 1) for line in (output_dir / "stdout.txt").read_text().splitlines() if "=" in line
    )
    assert Path(printed["job_dir"]) == output_dir
    answer = call(project, f"ps:start {app}")
    assert answer.ok, answer.output
    wait_for(lambda: [r["state"] for r in call(project, f"ps:report {app}").data] == ["RUNNING"])
    time.sleep(1.2)  # a process that fails to exec would be in BACKOFF by now
    rows = call(project, f"ps:report {app}").data
    assert [(r["state"], r["restarts"]) for r in rows] == [("RUNNING", 0)], rows
    assert any("started" in line["text"] for line in call(project, f"logs {app} --num 50").data)
    info = call(project, f"apps:info {app}").data
    for path in (info["settings"].get("executable"), info["source_detail"].get("source_dir")):
        assert path is None or os.path.isabs(path), info
    assert call(project, f"ps:stop {app}").ok
    return printed


SCRIPT = (
    '#!/bin/sh\necho "cwd=$(pwd)"\necho "job_dir=$BERTH_JOB_DIR"\n'
    '[ -n "$BERTH_JOB_ID" ] && exit 0\necho started\nexec sleep 1000\n'
)


def git(folder: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
    )


def test_git_sync_then_run_and_ps_start(project: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "bin").mkdir(parents=True)
    (repo / "bin" / "serve.sh").write_text(SCRIPT)
    (repo / "bin" / "serve.sh").chmod(0o755)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "serve")
    answer = call(project, ["git:sync", "fromgit", f"file://{repo}", "--executable", "bin/serve.sh"])
    assert answer.ok, answer.output
    assert os.path.isabs(answer.data["executable"]), answer.data
    printed = run_and_start(project, "fromgit")
    assert printed["cwd"] == str(project / "var" / "apps" / "fromgit" / "current")  # the checkout


def test_upload_then_run_and_ps_start(project: Path, tmp_path: Path) -> None:
    executable = tmp_path / "uploaded.sh"
    executable.write_text(SCRIPT)
    berth = VENV / "bin" / "berth"
    uploaded = subprocess.run(
        [str(berth), "--socket", "./run/berthd.sock", "upload", "fromupload", str(executable)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert uploaded.returncode == 0, uploaded.stderr
    printed = run_and_start(project, "fromupload")
    assert printed["cwd"] == str(project / "var" / "apps" / "fromupload" / "bin")  # the executable's


def test_archive_then_run_and_ps_start(project: Path, tmp_path: Path) -> None:
    source = tmp_path / "archive-source" / "app-1.0"
    source.mkdir(parents=True)
    (source / "Procfile").write_text("web: ./serve.sh\n")
    (source / "serve.sh").write_text(SCRIPT)
    (source / "serve.sh").chmod(0o755)
    with tarfile.open(tmp_path / "app.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="app-1.0")
    answer = call(project, ["git:from-archive", "fromarchive", f"file://{tmp_path / 'app.tar.gz'}"])
    assert answer.ok, answer.output
    assert call(project, "ps:stop fromarchive").ok  # an archive deploy starts the app: stopped first
    printed = run_and_start(project, "fromarchive")
    assert printed["cwd"] == str(project / "var" / "apps" / "fromarchive" / "current" / "app-1.0")


def test_every_path_of_the_config_is_made_absolute(tmp_path: Path) -> None:
    """Flags and variables from the folder berthd starts in; a TOML file's from the file's folder."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "berthd.toml").write_text(
        'data_dir = "data"\nlog_file = "../logs/berthd.log"\ncwd_roots = ["srv", "/opt/apps"]\n'
    )
    config = load_config("etc/berthd.toml", {}, {}, cwd=str(tmp_path))
    assert config.data_path() == tmp_path / "etc" / "data"
    assert config.log_file == str(tmp_path / "logs" / "berthd.log")
    assert config.cwd_roots == [str(tmp_path / "etc" / "srv"), "/opt/apps"]
    config = load_config(
        None,
        {"BERTHD_SOCK_PATH": "run/b.sock", "BERTHD_CWD_ROOTS": "a:/b"},
        {"data_dir": "./var", "log_file": "./var/berthd.log"},
        cwd=str(tmp_path),
    )
    assert config.socket_path() == tmp_path / "run" / "b.sock"
    assert config.data_path() == tmp_path / "var"
    assert config.log_file == str(tmp_path / "var" / "berthd.log")
    assert config.cwd_roots == [str(tmp_path / "a"), "/b"]


def test_relative_paths_an_older_berthd_stored_are_made_absolute_at_start(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    """What `make run` on an older berthd left in its database (var/apps/X/...) runs again after an
    upgrade: the paths are taken from the folder berthd starts in, as they always meant."""
    daemon = start_berthd()
    tool = tmp_path / "tool.sh"
    tool.write_text('#!/bin/sh\necho "ran $(pwd)"\n')
    tool.chmod(0o755)
    assert daemon.call(["apps:from-local", "older", str(tool)]).ok
    daemon.stop()
    relative = os.path.relpath(tool, ROOT)  # the test's berthd starts in ROOT
    with sqlite3.connect(daemon.data_dir / "berthd.db") as db:
        settings = json.loads(db.execute("SELECT settings FROM apps WHERE name = 'older'").fetchone()[0])
        settings["executable"] = relative
        db.execute("UPDATE apps SET settings = ? WHERE name = 'older'", (json.dumps(settings).encode(),))
    daemon.start()
    assert daemon.call("apps:info older").data["settings"]["executable"] == str(tool)
    answer = daemon.call("run older")
    assert answer.ok, answer.output
    assert (Path(answer.data["output_dir"]) / "stdout.txt").read_text() == f"ran {tmp_path}\n"
