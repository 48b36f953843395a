"""Modes under the data dir: each app's user gets what its processes need, nobody else anything.

Two apps are deployed (one as a --user app with a build, one as root from an archive), run and started;
then every file and folder under the data dir is listed with its mode and owner and checked against
the rule, and a second real user tries to read what is not its own.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd
from tests.test_sources import git
from tests.users import NEEDS_ROOT, User, system_users

pytestmark = NEEDS_ROOT


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[User, User]]:
    with system_users("bmodea", "bmodeb") as (owner, stranger):
        yield owner, stranger


def deploy_both(daemon: Berthd, owner: User, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "build.sh").write_text(
        "mkdir -p out\nprintf '#!/bin/sh\\necho secret-a\\nsleep 1000\\n' > out/app\nchmod 755 out/app\n"
    )
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "v1")
    answer = daemon.call(
        ["git:sync", "alpha", f"file://{repo}", "--user", owner.name, "--build-cmd", "sh build.sh",
         "--executable", "out/app", "--mount", "/data/out:OUTPUT"]
    )  # fmt: skip
    assert answer.ok, answer.output
    archive = tmp_path / "beta.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in {
            "Procfile": b"web: echo secret-b; exec sleep 1000\n",
            "code.txt": b"secret-b\n",
        }.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    answer = daemon.call(["git:from-archive", "beta", f"file://{archive}"])
    assert answer.ok, answer.output
    for app in ("alpha", "beta"):
        ran = daemon.call(f"run {app} --timeout 1")
        assert ran.data["job_id"], ran.output
    assert daemon.call("ps:start alpha").ok


def listing(data_dir: Path) -> list[tuple[Path, os.stat_result]]:
    entries = [(data_dir, data_dir.lstat())]
    for root, dirs, files in os.walk(data_dir):
        entries += [(Path(root, name), Path(root, name).lstat()) for name in (*dirs, *files)]
    return entries


def check_rule(data_dir: Path, owner: User) -> list[str]:
    """Each entry against the rule; what breaks it, for people."""
    groups = {"alpha": owner.gid, "beta": 0}
    wrong: list[str] = []
    for path, info in listing(data_dir):
        mode, relative = stat.S_IMODE(info.st_mode), path.relative_to(data_dir)
        parts = relative.parts
        shown = f"{relative} {mode:o} {info.st_uid}:{info.st_gid}"
        if stat.S_ISLNK(info.st_mode):
            continue
        if parts in ((), ("apps",)):
            expected_ok = mode == 0o711 and info.st_uid == 0
        elif parts[0] != "apps":  # the database, berthd's own helpers and caches
            expected_ok = mode & 0o077 == 0 and info.st_uid == 0
        else:
            app_gid = groups[parts[1]]
            if mode & 0o007:
                expected_ok = False  # others: nothing, anywhere in an app
            elif len(parts) == 2:
                expected_ok = (mode, info.st_uid, info.st_gid) == (0o750, 0, app_gid)
            elif parts[2] in ("repo.git", "logs") or parts[2].startswith(".incoming-"):
                expected_ok = mode & 0o070 == 0 and info.st_uid == 0  # berthd's only
            elif parts[2] in ("jobs", "builds") and stat.S_ISREG(info.st_mode):  # the app's group reads them
                expected_ok = (mode, info.st_uid, info.st_gid) == (0o640, 0, app_gid)
            elif parts[2] == "mounts" and len(parts) == 5:  # the mount itself: its user's
                expected_ok = mode & 0o007 == 0 and info.st_uid == (owner.uid if app_gid else 0)
            else:  # code and folders the app enters: berthd's, the app's group reads, never writes
                expected_ok = info.st_uid == 0 and info.st_gid == app_gid and mode & 0o020 == 0
        if not expected_ok:
            wrong.append(shown)
    return wrong


@pytest.fixture
def deployed(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, tmp_path: Path, users: tuple[User, User]
) -> tuple[Berthd, User, User]:
    """A berthd with both apps deployed, run and started; the alpha app's user, and a stranger."""
    owner, stranger = users
    daemon = start_berthd(root=reachable_tmp)
    deploy_both(daemon, owner, tmp_path)
    return daemon, owner, stranger


def test_every_file_under_the_data_dir_gives_nobody_else_anything(
    deployed: tuple[Berthd, User, User],
) -> None:
    daemon, owner, stranger = deployed
    data_dir = daemon.data_dir
    assert check_rule(data_dir, owner) == []
    kinds = {
        p.relative_to(data_dir).parts[2]
        for p, _ in listing(data_dir)
        if len(p.relative_to(data_dir).parts) > 2
    }
    assert {"releases", "repo.git", "jobs", "logs", "builds", "mounts", "current"} <= kinds  # all were seen
    alpha = data_dir / "apps" / "alpha"
    job = next((alpha / "jobs").iterdir())
    release = (alpha / "current").resolve()
    secrets = [
        job / "stdout.txt",
        alpha / "repo.git" / "HEAD",
        release / "out" / "app",
        alpha / "logs" / "main.1.log",
    ]
    beta = data_dir / "apps" / "beta"
    beta_files = [(beta / "current").resolve() / "code.txt", next((beta / "jobs").iterdir()) / "stdout.txt"]
    for path in [*secrets, *beta_files, data_dir / "berthd.db"]:
        assert path.exists(), path
        attempt = stranger.run(["cat", str(path)])
        assert attempt.returncode != 0 and "Permission denied" in attempt.stderr, path
    listed = stranger.run(["ls", str(data_dir), str(data_dir / "apps")])
    assert listed.returncode != 0 and "Permission denied" in listed.stderr
    # the app's own user reads its code and its job's output, and nothing of berthd's or of the other app
    assert owner.run(["cat", str(release / "out" / "app")]).returncode == 0
    assert owner.run(["cat", str(job / "stdout.txt")]).stdout == "secret-a\n"
    for path in [alpha / "repo.git" / "HEAD", alpha / "logs" / "main.1.log", *beta_files]:
        assert owner.run(["cat", str(path)]).returncode != 0, path


def test_an_installation_left_world_readable_is_closed_at_start(deployed: tuple[Berthd, User, User]) -> None:
    daemon, owner, stranger = deployed
    daemon.stop()
    # what an older berthd made: 0755 folders, 0644 files, everywhere
    subprocess.run(["chmod", "-R", "go+rX", str(daemon.data_dir)], check=True)
    subprocess.run(["chgrp", "root", str(daemon.data_dir / "apps" / "alpha")], check=True)
    assert check_rule(daemon.data_dir, owner) != []
    daemon.start()
    assert check_rule(daemon.data_dir, owner) == []
    job = next((daemon.data_dir / "apps" / "alpha" / "jobs").iterdir())
    assert stranger.run(["cat", str(job / "stdout.txt")]).returncode != 0
    assert daemon.call("run alpha --timeout 1").data["job_id"]


def test_the_folders_made_for_the_socket_stay_reachable(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, users: tuple[User, User]
) -> None:
    _, stranger = users
    daemon = start_berthd(root=reachable_tmp, extra_args=["--socket-mode", "0666"])
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o755  # made by berthd, under its umask 077
    ping = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        " s.sendall(b'ping\\n'); print(s.recv(200).decode())"
    )
    answer = stranger.run(["/usr/bin/python3", "-c", ping, str(daemon.socket)])
    assert '"pong"' in answer.stdout, answer.stderr


def test_a_new_user_for_the_app_gets_its_code_and_the_old_one_loses_it(
    deployed: tuple[Berthd, User, User],
) -> None:
    daemon, old, new = deployed
    assert daemon.call("ps:stop alpha").ok
    assert daemon.call(f"apps:set alpha user {new.name}").ok
    ran = daemon.call("run alpha --timeout 1")
    assert (Path(ran.data["output_dir"]) / "stdout.txt").read_text() == "secret-a\n"
    assert check_rule(daemon.data_dir, new) == []
    code = (daemon.data_dir / "apps" / "alpha" / "current").resolve() / "out" / "app"
    assert new.run(["cat", str(code)]).returncode == 0
    assert old.run(["cat", str(code)]).returncode != 0
