"""What an app's process starts with: its environment (built, never berthd's own), its user (a name or a
numeric id), its working directory (confined), PORT for Procfile types, and mount folders that no link
can redirect."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berthd.store import modes
from tests.daemon_proc import Berthd
from tests.users import NEEDS_ROOT, User, system_users

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


@pytest.fixture
def env_berthd(start_berthd: Callable[..., Berthd], reachable_tmp: Path) -> Berthd:
    """berthd with variables of its own in its environment (a marker, the shell's MAKEFLAGS, a
    relative PWD, a secret), in a folder other users may traverse (for --user apps)."""
    return start_berthd(root=reachable_tmp, env=BERTHD_ENV)


def test_a_child_gets_a_clean_documented_environment(env_berthd: Berthd, reachable_tmp: Path) -> None:
    show = script(reachable_tmp, "show-env.sh", ENV_SCRIPT)
    answer = env_berthd.call(["apps:from-local", "clean", str(show), "--env", "GREETING=hi"])
    assert answer.ok, answer.output
    env = run_env(env_berthd, "clean")
    me = pwd.getpwuid(os.geteuid())
    job_dir = env.pop("BERTH_JOB_DIR")
    job_id = env.pop("BERTH_JOB_ID")
    assert job_dir.endswith(job_id) and os.path.isabs(job_dir)
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": me.pw_dir,
        "SHELL": me.pw_shell,
        "USER": me.pw_name,
        "LOGNAME": me.pw_name,
        "PWD": str(reachable_tmp),  # the executable's folder, absolute
        "GREETING": "hi",
        "BERTH_APP": "clean",
    }
    for name in BERTHD_ENV:
        assert name not in env or env[name] != BERTHD_ENV[name], name


def test_the_config_sets_defaults_and_passes_variables_through(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd(
        env={**BERTHD_ENV, "BERTH_TEST_PASSED": "yes", "BERTH_TEST_OTHER": "too", "BERTHD_PRIVATE": "no"},
        extra_args=[
            "--pass-env", "BERTH_TEST_P*", "--pass-env", "BERTHD_PRIVATE",
            "--child-env", "PATH=/opt/tools/bin:/usr/bin:/bin", "--child-env", "LANG=en_US.UTF-8",
        ],
    )  # fmt: skip
    show = script(tmp_path, "show-env.sh", ENV_SCRIPT)
    assert daemon.call(["apps:from-local", "passing", str(show)]).ok
    env = run_env(daemon, "passing")
    assert env["PATH"] == "/opt/tools/bin:/usr/bin:/bin"
    assert env["LANG"] == "en_US.UTF-8"
    assert env["BERTH_TEST_PASSED"] == "yes"
    assert "BERTH_TEST_OTHER" not in env  # not named
    assert "BERTHD_PRIVATE" not in env  # berthd's own, never passed
    assert MARKER not in env
    # the app's config is over the defaults; USER and LOGNAME always name the account
    assert daemon.call(["config:set", "passing", "LANG=de_DE.UTF-8", "USER=someone-else"]).ok
    env = run_env(daemon, "passing")
    assert env["LANG"] == "de_DE.UTF-8"
    assert env["USER"] == env["LOGNAME"] == pwd.getpwuid(os.geteuid()).pw_name


# --user, by name and by numeric id


@pytest.fixture
def app_user() -> Iterator[User]:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    with system_users("bcenv") as (user,):
        yield user


@NEEDS_ROOT
@pytest.mark.parametrize("form", ["name", "uid", "uid:gid", "name:gid"])
def test_a_user_process_gets_that_users_home_user_and_logname(
    env_berthd: Berthd, reachable_tmp: Path, app_user: User, form: str
) -> None:
    spec = {
        "name": app_user.name,
        "uid": str(app_user.uid),
        "uid:gid": f"{app_user.uid}:{app_user.gid}",
        "name:gid": f"{app_user.name}:{app_user.gid}",
    }[form]
    show = script(reachable_tmp, "show-env.sh", '#!/bin/sh\necho "ID=$(id -u):$(id -g)"\nexec /usr/bin/env\n')
    answer = env_berthd.call(["apps:from-local", "asuser", str(show), "--user", spec])
    assert answer.ok, answer.output
    stored = env_berthd.call("apps:info asuser").data["settings"]["user"]
    assert stored == (app_user.name if ":" not in spec else f"{app_user.name}:{app_user.name}")
    env = run_env(env_berthd, "asuser")
    entry = pwd.getpwnam(app_user.name)
    assert env["ID"] == f"{app_user.uid}:{app_user.gid}"
    assert (env["USER"], env["LOGNAME"], env["HOME"]) == (app_user.name, app_user.name, entry.pw_dir)
    assert MARKER not in env


@NEEDS_ROOT
def test_numeric_user_65534_runs_as_nobody(env_berthd: Berthd, reachable_tmp: Path) -> None:
    nobody = pwd.getpwuid(65534)
    show = script(reachable_tmp, "show-env.sh", '#!/bin/sh\necho "ID=$(id -u):$(id -g)"\nexec /usr/bin/env\n')
    for spec in ("65534", "65534:65534"):
        answer = env_berthd.call(["apps:from-local", "nobody-app", str(show), "--user", spec])
        assert answer.ok, answer.output
        env = run_env(env_berthd, "nobody-app")
        assert env["ID"] == "65534:65534"
        assert (env["USER"], env["HOME"]) == (nobody.pw_name, nobody.pw_dir)


def test_an_unknown_numeric_user_is_refused_clearly(berthd: Berthd) -> None:
    free_uid = next(uid for uid in range(54321, 60000) if not _has_uid(uid))
    answer = berthd.call(["apps:from-local", "ghost", "/bin/true", "--user", str(free_uid)])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert f"no user '{free_uid}'" in answer.output


def _has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# PORT for Procfile process types


WEB = (
    "import os, socket, time; s = socket.create_server(('', int(os.environ['PORT']))); "
    "print('listening', os.environ['PORT'], flush=True); time.sleep(1000)"
)
PORT_PROCFILE = f"web: exec python3 -c \"{WEB}\"\nworker: exec sh -c 'echo worker $PORT; exec sleep 1000'\n"


def make_archive(folder: Path, procfile: str) -> Path:
    source = folder / "src" / "app"
    source.mkdir(parents=True)
    (source / "Procfile").write_text(procfile)
    with tarfile.open(folder / "app.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="app")
    return folder / "app.tar.gz"


def test_each_procfile_process_gets_a_free_port_shown_in_ps_report(berthd: Berthd, tmp_path: Path) -> None:
    archive = make_archive(tmp_path, PORT_PROCFILE)
    answer = berthd.call(["git:from-archive", "ported", f"file://{archive}"])
    assert answer.ok, answer.output
    assert berthd.call("ps:scale ported web=2 worker=1").ok

    def printed_ports() -> set[int]:
        lines = [line["text"].split() for line in berthd.call("logs ported --num 200").data]
        return {int(words[1]) for words in lines if words and words[0] in ("listening", "worker")}

    wait_for(lambda: len(printed_ports()) >= 3)
    rows = berthd.call("ps:report ported").data
    assert [(r["process"], r["state"]) for r in rows] == [
        ("web.1", "RUNNING"), ("web.2", "RUNNING"), ("worker.1", "RUNNING"),
    ]  # fmt: skip
    ports = {r["process"]: r["port"] for r in rows}
    assert all(isinstance(port, int) and port > 0 for port in ports.values()), ports
    assert len(set(ports.values())) == 3, ports  # one each
    assert printed_ports() == set(ports.values())  # what the process saw is what ps:report shows
    for process in ("web.1", "web.2"):  # the web processes bound their port: it was free
        with pytest.raises(OSError) as taken, socket.socket() as probe:
            probe.bind(("127.0.0.1", ports[process]))
        assert taken.value.errno == errno.EADDRINUSE
    table = berthd.call("ps:report ported").output
    assert "PORT" in table.splitlines()[0] and str(ports["web.1"]) in table
    # the same port after a restart of the process, while it is free
    assert berthd.call("ps:restart ported").ok
    wait_for(lambda: [r["state"] for r in berthd.call("ps:report ported").data] == ["RUNNING"] * 3)
    assert {r["process"]: r["port"] for r in berthd.call("ps:report ported").data} == ports
    berthd.call("ps:stop ported")


def test_a_port_the_config_gives_is_kept(berthd: Berthd, tmp_path: Path) -> None:
    archive = make_archive(tmp_path, "web: exec sh -c 'echo port $PORT; exec sleep 1000'\n")
    assert berthd.call("apps:create fixedport").ok
    assert berthd.call(["config:set", "fixedport", "PORT=18080"]).ok
    assert berthd.call(["git:from-archive", "fixedport", f"file://{archive}"]).ok
    wait_for(lambda: any(line["text"] == "port 18080" for line in berthd.call("logs fixedport").data))
    assert [r["port"] for r in berthd.call("ps:report fixedport").data] == [18080]
    berthd.call("ps:stop fixedport")


def test_an_executable_app_has_no_port(berthd: Berthd, tmp_path: Path) -> None:
    show = script(tmp_path, "show-env.sh", '#!/bin/sh\necho "port=${PORT:-none}"\nexec sleep 1000\n')
    assert berthd.call(["apps:from-local", "noport", str(show)]).ok
    assert berthd.call("ps:start noport").ok
    wait_for(lambda: any(line["text"] == "port=none" for line in berthd.call("logs noport").data))
    assert [r["port"] for r in berthd.call("ps:report noport").data] == [None]
    berthd.call("ps:stop noport")


# working directory


def test_the_default_working_directory_is_the_executables_folder(berthd: Berthd, tmp_path: Path) -> None:
    folder = tmp_path / "opt" / "tool"
    folder.mkdir(parents=True)
    show = script(folder, "where.sh", '#!/bin/sh\necho "cwd=$(pwd)"\n')
    assert berthd.call(["apps:from-local", "where", str(show)]).ok
    assert run_env(berthd, "where")["cwd"] == str(folder)


def test_cwd_is_confined_to_the_apps_folders_and_must_exist(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    (root / "site").mkdir(parents=True)
    daemon = start_berthd(extra_args=["--cwd-root", str(root)])
    show = script(tmp_path, "where.sh", '#!/bin/sh\necho "cwd=$(pwd)"\n')
    assert daemon.call(["apps:from-local", "confined", str(show)]).ok
    app_dir = daemon.data_dir / "apps" / "confined"
    (tmp_path / "elsewhere").mkdir()
    refused = {
        "/etc": "not in the app's folder",
        str(tmp_path / "elsewhere"): "not in the app's folder",
        str(root / "missing"): "no such folder",
        str(app_dir / "mounts" / "nothing-yet"): "no such folder",
        "../other-app": "leaves the app's folder",
        str(root / "site" / ".." / ".." / "elsewhere"): "not in the app's folder",
    }
    for cwd, message in refused.items():
        answer = daemon.call(["apps:set", "confined", "cwd", cwd])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), cwd
        assert message in answer.output, (cwd, answer.output)
        answer = daemon.call(["apps:from-local", "confined", str(show), "--cwd", cwd])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), cwd
    # a link inside a configured root that leads out of it does not count as inside
    (root / "escape").symlink_to("/etc")
    answer = daemon.call(["apps:set", "confined", "cwd", str(root / "escape")])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    for cwd in (str(root / "site"), str(tmp_path), str(app_dir)):  # a root, the executable's, the app's
        answer = daemon.call(["apps:set", "confined", "cwd", cwd])
        assert answer.ok, answer.output
        assert run_env(daemon, "confined")["cwd"] == cwd
    # relative: from the app's folder (its code, for git and archive apps); checked at start
    assert daemon.call(["apps:set", "confined", "cwd", "work"]).ok
    answer = daemon.call("run confined")
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert "invalid cwd 'work': no such folder" in answer.output
    (app_dir / "work").symlink_to("/etc")  # made a link out of the app's folder: refused at start too
    answer = daemon.call("run confined")
    assert "not in the app's folder" in answer.output


def test_a_relative_cwd_is_inside_the_checkout(berthd: Berthd, tmp_path: Path) -> None:
    source = tmp_path / "src" / "app"
    (source / "web").mkdir(parents=True)
    (source / "Procfile").write_text("web: exec sh -c 'echo cwd=$(pwd); exec sleep 1000'\n")
    with tarfile.open(tmp_path / "app.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="app")
    answer = berthd.call(
        ["git:from-archive", "incheckout", f"file://{tmp_path / 'app.tar.gz'}", "--cwd", "web"]
    )
    assert answer.ok, answer.output
    expected = f"cwd={berthd.data_dir / 'apps' / 'incheckout' / 'current' / 'app' / 'web'}"
    wait_for(lambda: any(line["text"] == expected for line in berthd.call("logs incheckout").data))
    berthd.call("ps:stop incheckout")


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


@NEEDS_ROOT
def test_a_link_planted_by_the_apps_user_stops_the_start(
    env_berthd: Berthd, reachable_tmp: Path, app_user: User
) -> None:
    """Nested mounts: the outer one is the app user's own, who replaces the place of the inner one
    with a link to a folder of root's. Starting the app is refused; the folder is untouched."""
    show = script(reachable_tmp, "show.sh", "#!/bin/sh\necho ok\n")
    answer = env_berthd.call([
        "apps:from-local", "nested", str(show), "--user", app_user.name,
        "--mount", "/data:OUTPUT", "--mount", "/data/inner:OUTPUT",
    ])  # fmt: skip
    assert answer.ok, answer.output
    assert env_berthd.call("run nested").ok
    outer = env_berthd.data_dir / "apps" / "nested" / "mounts" / "data"
    assert outer.stat().st_uid == app_user.uid
    victim = reachable_tmp / "victim"
    victim.mkdir(mode=0o755)
    before = victim.stat()
    planted = app_user.run(["sh", "-c", f"rm -rf '{outer}/inner' && ln -s '{victim}' '{outer}/inner'"])
    assert planted.returncode == 0, planted.stderr
    answer = env_berthd.call("run nested")
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert "mount /data/inner" in answer.output and "not a folder" in answer.output
    _unchanged(victim, before)
    shutil.rmtree(victim)


@NEEDS_ROOT
def test_a_mount_as_the_working_directory_stays_the_users_own(
    env_berthd: Berthd, reachable_tmp: Path, app_user: User
) -> None:
    """--cwd pointing into the app's own mount: the process starts there and can write there (the
    folders on the way to a cwd are opened to the app's group, but a mount is its user's, not berthd's)."""
    show = script(
        reachable_tmp,
        "write.sh",
        '#!/bin/sh\necho "cwd=$(pwd)"\n(echo done > result.txt) 2>/dev/null || true\n',
    )
    answer = env_berthd.call(
        ["apps:from-local", "inmount", str(show), "--user", app_user.name, "--mount", "/out:OUTPUT"]
    )
    assert answer.ok, answer.output
    assert env_berthd.call("run inmount").ok  # makes the mount
    mount = env_berthd.data_dir / "apps" / "inmount" / "mounts" / "out"
    assert env_berthd.call(["apps:set", "inmount", "cwd", str(mount)]).ok
    env = run_env(env_berthd, "inmount")
    assert env["cwd"] == str(mount)
    assert (mount / "result.txt").read_text() == "done\n"
    assert (mount.stat().st_uid, stat.S_IMODE(mount.stat().st_mode)) == (app_user.uid, 0o700)
