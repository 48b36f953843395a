"""Local files and repositories are read with the caller's rights: real users, real folders, real races.

berthd runs as root; alice and bob are system users made for these tests. bob must not deploy what only
alice may read, whatever the mode of the file itself, however he swaps links, and berthd's answers must not
tell him whether a path he may not read exists.
"""

from __future__ import annotations

import grp
import http.server
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.daemon_proc import ROOT, Berthd
from tests.test_sources import PROCFILE, git, make_tar
from tests.users import run_suffix

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make users and call as them")

ALICE, BOB = f"berth-alice-{run_suffix()}", f"berth-bob-{run_suffix()}"  # this run's own users


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, pwd.struct_passwd]]:
    made = []
    for name in (ALICE, BOB):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           check=True)  # fmt: skip
            made.append(name)
    yield {name: pwd.getpwnam(name) for name in (ALICE, BOB)}
    for name in made:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def homes(users: dict[str, pwd.struct_passwd]) -> Iterator[dict[str, Path]]:
    """A private (0700) folder for each user, in a folder everyone may search."""
    base = Path(tempfile.mkdtemp(prefix="berth-callers-", dir="/tmp"))
    base.chmod(0o755)
    folders = {}
    for name, entry in users.items():
        folder = base / name
        folder.mkdir(mode=0o700)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        folders[name] = folder
    yield folders
    shutil.rmtree(base)


@pytest.fixture
def daemon(start_berthd: Callable[..., Berthd], tmp_path: Path) -> Iterator[Berthd]:
    """berthd as root, on a socket everyone may reach: in a folder of its own under /tmp (the test's
    folders are root's only), linked from where the test's clients look for it."""
    public = Path(tempfile.mkdtemp(prefix="berth-socket-", dir="/tmp"))
    public.chmod(0o755)
    (tmp_path / "berthd" / "run").mkdir(parents=True)
    (tmp_path / "berthd" / "run" / "berthd.sock").symlink_to(public / "berthd.sock")
    started = start_berthd(extra_args=["--socket", str(public / "berthd.sock"), "--socket-mode", "0666"])
    yield started
    started.stop()
    shutil.rmtree(public, ignore_errors=True)


def call_as(daemon: Berthd, user: str, cmd: str, args: list[str]) -> dict[str, Any]:
    """One request from a process of `user` (its uid, gid and groups), through socat."""
    group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    command = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "socat", "-t", "30", "-",
               f"UNIX-CONNECT:{daemon.socket.resolve()}"]  # fmt: skip
    line = json.dumps({"cmd": cmd, "args": args}) + "\n"
    out = subprocess.run(command, input=line.encode(), capture_output=True, timeout=60)
    answers = [json.loads(text) for text in out.stdout.splitlines() if b'"ok"' in text]
    assert answers, (out.stdout, out.stderr)
    answer = answers[-1]
    assert isinstance(answer, dict)
    return answer


def archive_owned_by(
    folder: Path, user: pwd.struct_passwd, name: str = "app.tar.gz", mode: int = 0o644
) -> Path:
    path = folder / name
    make_tar(path, {"Procfile": PROCFILE})
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(mode)
    return path


def assert_still_answers(daemon: Berthd) -> None:
    assert daemon.call("ping").output == "pong"


def test_a_readable_file_in_another_users_private_folder_is_not_deployed(
    daemon: Berthd, users: dict[str, pwd.struct_passwd], homes: dict[str, Path]
) -> None:
    private = archive_owned_by(homes[ALICE], users[ALICE])  # 0644, but in alice's 0700 folder
    answer = call_as(daemon, BOB, "git:from-archive", ["peeked", f"file://{private}"])
    assert (answer["ok"], answer["error"]) == (False, "invalid_argument"), answer
    assert daemon.call("apps:list").data == []
    assert not (daemon.data_dir / "apps" / "peeked").exists()
    mine = call_as(daemon, ALICE, "git:from-archive", ["alices", f"file://{private}"])
    assert mine["ok"], mine
    daemon.call("ps:stop alices")
    assert_still_answers(daemon)


def test_root_reads_its_own_file_and_nobody_does_not(daemon: Berthd, tmp_path: Path) -> None:
    private = tmp_path / "private.tar.gz"
    make_tar(private, {"Procfile": PROCFILE})
    private.chmod(0o600)  # root's only
    answer = call_as(daemon, "nobody", "git:from-archive", ["peek", f"file://{private}"])
    assert (answer["ok"], answer["error"]) == (False, "invalid_argument"), answer
    assert "may not read that file" in answer["output"]
    assert daemon.call("apps:list").data == []
    assert daemon.call(["git:from-archive", "peek", f"file://{private}"]).ok  # root may
    daemon.call("ps:stop peek")


def test_missing_and_forbidden_files_get_the_same_answer(
    daemon: Berthd, users: dict[str, pwd.struct_passwd], homes: dict[str, Path]
) -> None:
    forbidden = archive_owned_by(homes[ALICE], users[ALICE], mode=0o600)
    missing = homes[ALICE] / "missing.tar.gz"
    open_but_missing = homes[BOB].parent / "nothing-here.tar.gz"
    answers = []
    for path in (forbidden, missing, open_but_missing):
        answer = call_as(daemon, BOB, "git:from-archive", ["probe", f"file://{path}"])
        answers.append({**answer, "output": answer["output"].replace(str(path), "PATH")})
    assert answers[0] == answers[1] == answers[2], answers
    assert answers[0]["error"] == "invalid_argument"
    assert daemon.call("apps:list").data == []
    assert_still_answers(daemon)


def test_berthds_own_descriptors_are_not_reachable_through_proc_self_fd(
    daemon: Berthd, homes: dict[str, Path], users: dict[str, pwd.struct_passwd]
) -> None:
    """The child that opens as the caller is a fork of berthd: it must hold none of berthd's descriptors
    (the database, logs, another deploy's open archive), or /proc/self/fd/N would open them."""
    links = homes[BOB] / "links"
    links.mkdir()
    os.chown(links, users[BOB].pw_uid, users[BOB].pw_gid)
    answers = set()
    for number in range(64):
        link = links / f"fd{number}.tgz"
        link.symlink_to(f"/proc/self/fd/{number}")
        answer = call_as(daemon, BOB, "git:from-archive", ["fdsteal", f"file://{link}"])
        answers.add((answer["error"], answer["output"].replace(str(link), "PATH")))
    assert answers == {
        ("invalid_argument", "file://PATH: there is no such file, or you may not read that file")
    }
    cwd = links / "cwd.tgz"
    cwd.symlink_to("/proc/self/cwd")
    answer = call_as(daemon, BOB, "git:from-archive", ["fdsteal", f"file://{cwd}"])
    assert answer["error"] == "invalid_argument"
    assert daemon.call("apps:list").data == []
    # git's upload-pack as bob: /proc/self/cwd is not berthd's working directory (a git checkout here)
    repo_link = links / "cwd-repo"
    repo_link.symlink_to("/proc/self/cwd")
    answer = call_as(daemon, BOB, "git:sync", ["cwdsteal", f"file://{repo_link}"])
    assert answer["error"] == "invalid_argument"
    assert "does not appear to be a git repository" in answer["output"], answer["output"]
    assert str(ROOT) not in answer["output"]
    assert_still_answers(daemon)


def test_a_symlink_swapped_under_berthd_does_not_win(
    daemon: Berthd, users: dict[str, pwd.struct_passwd], homes: dict[str, Path], tmp_path: Path
) -> None:
    bob = users[BOB]
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    private = secret / "secret.tar.gz"
    make_tar(private, {"Procfile": b"web: echo ROOT-ONLY-SECRET\n"})
    private.chmod(0o600)
    # bob's own archive, readable by him, and a link in his folder that he flips between the two
    own = archive_owned_by(homes[BOB], bob, "own.tar.gz")
    link = homes[BOB] / "flip.tar.gz"
    stop = threading.Event()

    def flip() -> None:
        # as bob would: a process of his own, renaming links into place as fast as it can
        script = (f"import os\nwhile True:\n for t in ({str(own)!r}, {str(private)!r}):\n"
                  f"  os.symlink(t, {str(link)!r} + '.new'); os.replace({str(link)!r} + '.new', {str(link)!r})\n")  # fmt: skip
        proc = subprocess.Popen(
            ["setpriv", f"--reuid={BOB}", f"--regid={BOB}", "--init-groups", "/usr/bin/python3", "-c", script]
        )
        stop.wait()
        proc.kill()
        proc.wait()

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        results = [call_as(daemon, BOB, "git:from-archive", ["racer", f"file://{link}"]) for _ in range(12)]
    finally:
        stop.set()
        flipper.join()
    assert all(r["ok"] or r["error"] == "invalid_argument" for r in results), results
    for procfile in (daemon.data_dir / "apps").glob("racer/releases/*/Procfile"):
        assert b"ROOT-ONLY-SECRET" not in procfile.read_bytes()
    log = subprocess.run(["grep", "-r", "ROOT-ONLY-SECRET", str(daemon.data_dir)], capture_output=True)
    assert log.stdout == b""
    daemon.call("ps:stop racer")
    assert_still_answers(daemon)


@pytest.mark.parametrize("url", ["file:///tmp/app%00.tar.gz", "file:///tmp/%ff%fe.tar.gz",
                                 "file://elsewhere.example/tmp/app.tar.gz"])  # fmt: skip
def test_a_file_url_with_a_nul_or_undecodable_path_is_bad_input(daemon: Berthd, url: str) -> None:
    answer = daemon.call(["git:from-archive", "nul", url])
    assert (answer.ok, answer.error) == (False, "invalid_argument"), answer.output
    assert daemon.call("apps:list").data == []
    assert_still_answers(daemon)


def test_git_sync_reads_a_local_repository_with_the_callers_rights(
    daemon: Berthd, users: dict[str, pwd.struct_passwd], homes: dict[str, Path]
) -> None:
    alice = users[ALICE]
    repo = homes[ALICE] / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "SECRET").write_text("alice's private code\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "private")
    subprocess.run(["chown", "-R", f"{alice.pw_uid}:{alice.pw_gid}", str(repo)], check=True)
    subprocess.run(["chmod", "-R", "go+rX", str(repo)], check=True)  # readable files, in a 0700 folder

    stolen = call_as(daemon, BOB, "git:sync", ["stolen", f"file://{repo}"])
    assert (stolen["ok"], stolen["error"]) == (False, "invalid_argument"), stolen
    app_dir = daemon.data_dir / "apps" / "stolen"
    assert not list(app_dir.glob("releases/*/SECRET"))
    cache = app_dir / "repo.git"
    assert not cache.exists() or not subprocess.run(["git", "-C", str(cache), "rev-parse", "--verify", "-q", "HEAD"],
                                                     capture_output=True).stdout  # fmt: skip
    missing = call_as(daemon, BOB, "git:sync", ["stolen", f"file://{homes[ALICE]}/nothing"])
    assert stolen["output"].replace(str(repo), "PATH") == missing["output"].replace(
        f"{homes[ALICE]}/nothing", "PATH"
    )

    own = call_as(daemon, ALICE, "git:sync", ["alices-code", f"file://{repo}"])
    assert own["ok"], own
    assert (daemon.data_dir / "apps" / "alices-code" / "current" / "SECRET").exists()
    again = call_as(daemon, ALICE, "git:sync", ["alices-code", f"file://{repo}"])  # a fetch into the cache
    assert again["ok"], again
    # the cache holds alice's objects now: bob's sync of the same app and URL must still read as bob
    release = daemon.call("apps:info alices-code").data["source_detail"]["release"]
    reused = call_as(daemon, BOB, "git:sync", ["alices-code", f"file://{repo}"])
    assert (reused["ok"], reused["error"]) == (False, "invalid_argument"), reused
    for answer in (stolen, reused):  # read as bob (who cannot enter the folder), not as root
        assert "does not appear to be a git repository" in answer["output"], answer
    assert daemon.call("apps:info alices-code").data["source_detail"]["release"] == release
    assert_still_answers(daemon)


class CredentialWall(http.server.BaseHTTPRequestHandler):
    """A git server on loopback that asks for a password and records every Authorization it is sent."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="private"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_roots_git_set_up_never_acts_for_another_caller(
    start_berthd: Callable[..., Berthd], users: dict[str, pwd.struct_passwd], tmp_path: Path
) -> None:
    """root's ~/.gitconfig holds a credential helper (and ~/.netrc a password) for a private server:
    a fetch for bob must not send them; one for root does (so the set-up is real)."""
    home = tmp_path / "root-home"
    home.mkdir()
    helper = "!f() { echo username=root; echo password=root-helper-pw; }; f"
    (home / ".gitconfig").write_text(f'[credential]\n\thelper = "{helper}"\n')
    (home / ".netrc").write_text("machine 127.0.0.1 login root password root-netrc-pw\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CredentialWall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/private.git"
    public = Path(tempfile.mkdtemp(prefix="berth-socket-", dir="/tmp"))
    public.chmod(0o755)
    (tmp_path / "berthd" / "run").mkdir(parents=True)
    (tmp_path / "berthd" / "run" / "berthd.sock").symlink_to(public / "berthd.sock")
    try:
        daemon = start_berthd(
            extra_args=["--socket", str(public / "berthd.sock"), "--socket-mode", "0666"],
            env={"HOME": str(home)},
        )
        CredentialWall.seen.clear()
        answer = call_as(daemon, BOB, "git:sync", ["private", url])
        assert (answer["ok"], answer["error"]) == (False, "invalid_argument"), answer
        assert CredentialWall.seen and not any(CredentialWall.seen), CredentialWall.seen
        for secret in ("root-helper-pw", "root-netrc-pw"):
            assert secret not in daemon.log() + json.dumps(answer)
        CredentialWall.seen.clear()
        daemon.call(["git:sync", "private-as-root", url])
        assert any(CredentialWall.seen), "root's own set-up was not used for root: the test sees nothing"
        assert_still_answers(daemon)
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(public, ignore_errors=True)
