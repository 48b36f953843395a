"""Processes and builds run with the app user's rights, from the first step: the working directory is
entered as that user, and a build runs as that user in a release it owns only while it builds."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd
from tests.test_sources import git
from tests.users import NEEDS_ROOT, User, system_users

pytestmark = NEEDS_ROOT


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    with system_users("bpriv", extra_group=True) as (made,):
        yield made


def cwd_roots(reachable_tmp: Path) -> list[str]:
    """Where these tests point --cwd: /root (closed to the user) and folders of the test's own."""
    return ["--cwd-root", "/root", "--cwd-root", str(reachable_tmp)]


@pytest.fixture
def daemon(start_berthd: Callable[..., Berthd], reachable_tmp: Path) -> Berthd:
    # a data dir the app's user may reach
    return start_berthd(root=reachable_tmp, extra_args=cwd_roots(reachable_tmp))


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


def test_through_the_python_shim_the_folder_is_entered_as_the_user_too(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, user: User
) -> None:
    no_compiler = reachable_tmp / "empty-bin"
    no_compiler.mkdir()
    daemon = start_berthd(
        "fallback", root=reachable_tmp, env={"PATH": str(no_compiler)}, extra_args=cwd_roots(reachable_tmp)
    )
    show_where(daemon, "nosy", user, "/root")
    answer = daemon.call("run nosy")
    assert f"cannot enter working directory /root as {user.name}: Permission denied" in answer.output
    folder = reachable_tmp / "open"
    folder.mkdir(mode=0o755)
    show_where(daemon, "polite", user, str(folder))
    answer = daemon.call("run polite")
    assert (Path(answer.data["output_dir"]) / "stdout.txt").read_text() == f"{folder} {user.uid}\n"
    assert "processes are started through the Python shim" in daemon.log()


BUILD = """#!/bin/sh
set -e
id -u > built-by
id -G > built-groups
mkdir -p out
printf '#!/bin/sh\\necho "hello from $(id -un)"\\n' > out/app
chmod 755 out/app
cp out/app out/setuid
chmod 4755 out/setuid
echo notes > out/notes
chmod 666 out/notes
ln -s /etc/passwd out/passwd-link
mkfifo out/fifo
echo linked > out/linked
ln out/linked out/linked-too
"""


@pytest.fixture
def built_repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "build.sh").write_text(BUILD)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "v1")
    os.chmod(tmp_path, 0o755)  # berthd (root) clones it; nothing here is the user's
    return repo


def test_a_build_runs_as_the_apps_user_and_its_release_is_berthds_afterwards(
    daemon: Berthd, user: User, built_repository: Path
) -> None:
    answer = daemon.call(
        ["git:sync", "built", f"file://{built_repository}", "--user", user.name,
         "--build-cmd", "sh build.sh", "--executable", "out/app"]
    )  # fmt: skip
    assert answer.ok, answer.output
    release = (daemon.data_dir / "apps" / "built" / "current").resolve()
    assert (release / "built-by").read_text().strip() == str(user.uid)
    assert str(user.extra_gid) in (release / "built-groups").read_text().split()  # with its groups
    passwd = os.stat("/etc/passwd")
    assert (passwd.st_uid, passwd.st_gid, stat.S_IMODE(passwd.st_mode)) == (0, 0, 0o644)  # not followed
    assert stat.S_ISFIFO((release / "out" / "fifo").lstat().st_mode)  # never opened
    assert (release / "out" / "linked").stat().st_uid == user.uid  # a hard link is not berthd's to give
    for path in [release, *release.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or stat.S_ISFIFO(info.st_mode) or info.st_nlink > 1 and path.is_file():
            continue

        mode = stat.S_IMODE(info.st_mode)
        assert (info.st_uid, info.st_gid) == (0, user.gid), path  # berthd's again, the app's group reads
        assert mode & 0o7027 == 0, f"{path}: {mode:o}"  # no set-id bit, no group write, nothing for others
    assert stat.S_IMODE((release / "out" / "setuid").stat().st_mode) == 0o750
    assert stat.S_IMODE((release / "out" / "notes").stat().st_mode) == 0o640
    # the app's user can run it, and cannot change it
    assert user.run([str(release / "out" / "app")]).stdout == f"hello from {user.name}\n"
    assert user.run(["sh", "-c", f"echo x >> {release}/out/app"]).returncode != 0
    ran = daemon.call("run built")
    assert ran.ok, ran.output
    assert (Path(ran.data["output_dir"]) / "stdout.txt").read_text() == f"hello from {user.name}\n"


def test_a_build_whose_release_its_user_cannot_reach_fails_clearly(
    start_berthd: Callable[..., Berthd], user: User, built_repository: Path, tmp_path: Path
) -> None:
    assert stat.S_IMODE(tmp_path.parent.stat().st_mode) & 0o001 == 0  # pytest's folders: root's only
    daemon = start_berthd("closed")
    answer = daemon.call(
        [
            "git:sync",
            "unreachable",
            f"file://{built_repository}",
            "--user",
            user.name,
            "--build-cmd",
            "id -u > x",
        ]
    )
    assert answer.ok is False
    assert "build failed" in answer.output
    assert "cannot enter working directory" in answer.output and f"as {user.name}" in answer.output
    assert "nothing of unreachable was kept" in answer.output
    assert daemon.call("apps:info unreachable").error == "not_found"


def test_an_uploaded_executable_runs_as_its_user_from_a_folder_open_to_its_group(
    daemon: Berthd, user: User
) -> None:
    data = b"#!/bin/sh\nid -u\n"
    with daemon.client() as client:
        begin = client.call(["upload:begin", "uploaded", "tool", str(len(data)), "1", "--user", user.name])
        assert begin.ok, begin.output
        session = begin.data["session_id"]
        assert client.call(["upload:chunk", session, "0", base64.b64encode(data).decode()]).ok
        end = client.call(["upload:end", session])
        assert end.ok, end.output
    ran = daemon.call("run uploaded")
    assert ran.ok, ran.output
    assert (Path(ran.data["output_dir"]) / "stdout.txt").read_text() == f"{user.uid}\n"
    folder = Path(end.data["executable"]).parent.stat()
    assert (stat.S_IMODE(folder.st_mode), folder.st_uid, folder.st_gid) == (0o750, 0, user.gid)
