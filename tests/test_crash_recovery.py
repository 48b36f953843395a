"""berthd killed with SIGKILL: what it was deploying is swept at the next start and recorded as failed,
and what had ended by itself under its restart policy stays ended (desired state is what the user asked).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import socketserver
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd
from tests.test_hostile_archives import deep_tmp_path, deep_tree
from tests.test_native_runner import report, state_of, wait_for
from tests.test_sources import git

PROCFILE = b"web: echo up; exec sleep 1000\n"
deep_tmp_path = deep_tmp_path  # a fixture of this module too


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Archives(http.server.BaseHTTPRequestHandler):
    """`/fast/NAME` whole at once, `/slow/NAME` dripped (1 KiB a 0.1 s, as a slow server would)."""

    served: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        _, speed, name = self.path.split("/", 2)
        data = self.served[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        step = len(data) if speed == "fast" else 1024
        try:
            for offset in range(0, len(data), step):
                self.wfile.write(data[offset : offset + step])
                self.wfile.flush()
                if speed == "slow":
                    time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def archive_server() -> Iterator[str]:
    Archives.served = {
        "good.tar.gz": tar_bytes({"Procfile": PROCFILE, "v": b"1\n"}),
        # incompressible filler: the download takes minutes at the slow pace
        "big.tar.gz": tar_bytes({"Procfile": PROCFILE, "filler": os.urandom(400_000)}),
    }
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Archives)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def in_background(daemon: Berthd, command: list[str]) -> threading.Thread:
    """A deploy that will never answer (berthd is killed under it)."""

    def call() -> None:
        with contextlib.suppress(Exception):  # the connection dies with berthd, as it should
            daemon.call(command)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def source_detail(daemon: Berthd, app: str) -> dict[str, str]:
    answer = daemon.call(f"apps:info {app}")
    assert answer.ok, answer.output
    return dict(answer.data["source_detail"])


def leftovers(app_dir: Path) -> list[str]:
    """What an interrupted deploy may leave: temporary files, markers, releases `current` does not use."""
    live = (app_dir / "current").resolve() if (app_dir / "current").is_symlink() else None
    found = [p.name for p in app_dir.glob(".*")]
    found += [f"releases/{p.name}" for p in (app_dir / "releases").glob("*") if p.resolve() != live]
    found += [f"builds/{p.name}" for p in (app_dir / "builds").glob("*")]
    return found


def deployed(daemon: Berthd, app: str, archive_server: str) -> tuple[Path, Path]:
    """`app` deployed from good.tar.gz: its folder, and the release `current` points at."""
    first = daemon.call(["git:from-archive", app, f"{archive_server}/fast/good.tar.gz"])
    assert first.ok, first.output
    app_dir = daemon.data_dir / "apps" / app
    return app_dir, (app_dir / "current").resolve()


def test_kill_9_mid_download_is_swept_and_the_old_release_runs_again(
    start_berthd: Callable[..., Berthd], archive_server: str
) -> None:
    daemon = start_berthd()
    app_dir, live = deployed(daemon, "drip", archive_server)
    in_background(daemon, ["git:from-archive", "drip", f"{archive_server}/slow/big.tar.gz"])
    incoming = wait_for(lambda: list(app_dir.glob(".incoming-*")))
    assert isinstance(incoming, list)
    assert stat.S_IMODE(incoming[0].stat().st_mode) == 0o600  # private from the instant it exists
    assert source_detail(daemon, "drip")["status"] == "downloading"
    assert len(list((app_dir / "releases").iterdir())) == 2  # the live one and the one being filled
    daemon.kill()

    daemon.start()
    assert leftovers(app_dir) == []
    assert (app_dir / "current").resolve() == live
    detail = source_detail(daemon, "drip")
    assert detail["status"] == "failed"
    assert detail["error"] == "interrupted: berthd stopped during the deploy (downloading)"
    wait_for(lambda: state_of(daemon, "drip", "web.1") == "RUNNING")  # the old version, as before
    assert "a deploy was interrupted" in daemon.log()


def test_kill_9_mid_unpack_leaves_no_partial_release(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd()
    many = {f"files/{index:05}.txt": b"x" * 64 for index in range(30_000)}
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in {"Procfile": PROCFILE, **many}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    in_background(daemon, ["git:from-archive", "many", f"file://{archive}"])
    app_dir = daemon.data_dir / "apps" / "many"

    def unpacking() -> bool:
        releases = list((app_dir / "releases").glob("*"))
        return bool(releases) and any(releases[0].rglob("*.txt"))

    wait_for(unpacking, interval=0.005)
    daemon.kill()
    assert any(p.name.startswith(".deploying-") for p in app_dir.iterdir())

    daemon.start()
    assert leftovers(app_dir) == [] and list((app_dir / "releases").iterdir()) == []
    detail = source_detail(daemon, "many")
    assert detail["status"] == "failed"
    assert detail["error"].startswith("interrupted: berthd stopped during the deploy")
    assert report(daemon, "many") == []  # nothing to run: the deploy never finished


def repository_of(repo: Path, files: dict[str, str]) -> Path:
    """A git repository at `repo` with one commit of these files."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "v1")
    return repo


def test_kill_9_mid_build_removes_the_release_and_its_build_folder(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd()
    repo = repository_of(tmp_path / "repo", {"build.sh": f"touch {tmp_path}/building\nexec sleep 1000\n"})
    in_background(daemon, ["git:sync", "slowbuild", f"file://{repo}", "--build-cmd", "sh build.sh"])
    wait_for(lambda: (tmp_path / "building").exists())
    app_dir = daemon.data_dir / "apps" / "slowbuild"
    assert source_detail(daemon, "slowbuild")["status"] == "building"
    assert list((app_dir / "builds").iterdir()) and list((app_dir / "releases").iterdir())
    daemon.kill()

    daemon.start()
    assert leftovers(app_dir) == [] and list((app_dir / "releases").iterdir()) == []
    detail = source_detail(daemon, "slowbuild")
    assert (detail["status"], detail["error"]) == (
        "failed",
        "interrupted: berthd stopped during the deploy (building)",
    )
    again = daemon.call(["git:sync", "slowbuild", f"file://{repo}"])  # the app is usable again
    assert again.ok, again.output


# desired state across a restart


@pytest.mark.parametrize(
    ("policy", "command"),
    [("no", "exit 3"), ("no", "exit 0"), ("on-failure", "exit 0"), ("on-failure:2", "exit 1")],
)
def test_a_process_that_ended_under_its_policy_stays_ended_after_a_restart(
    start_berthd: Callable[..., Berthd], policy: str, command: str
) -> None:
    daemon = start_berthd()
    done = daemon.call(
        ["apps:from-local", "once", "/bin/sh", "--restart-policy", policy, "--", "-c", command]
    )
    assert done.ok, done.output
    assert daemon.call("ps:start once").ok
    wait_for(lambda: state_of(daemon, "once") in ("EXITED", "FAILED"))
    for stop in (daemon.kill, daemon.stop):  # killed, then stopped cleanly: the same either way
        stop()
        daemon.start()
        time.sleep(1.5)
        assert state_of(daemon, "once") == "none", report(daemon, "once")
    # what the user asks next still counts
    assert daemon.call("ps:start once").ok
    wait_for(lambda: state_of(daemon, "once") in ("EXITED", "FAILED"))


def test_running_and_stopped_apps_come_back_as_the_user_left_them(
    start_berthd: Callable[..., Berthd],
) -> None:
    daemon = start_berthd()
    for app in ("keeps", "stays-stopped", "no-policy"):
        policy = "no" if app == "no-policy" else "always"
        answer = daemon.call(["apps:from-local", app, "/bin/sleep", "--restart-policy", policy, "--", "1000"])
        assert answer.ok, answer.output
        assert daemon.call(f"ps:start {app}").ok
    assert daemon.call("ps:stop stays-stopped").ok
    for app in ("keeps", "no-policy"):
        wait_for(lambda app=app: state_of(daemon, app) == "RUNNING")  # type: ignore[misc]
    daemon.kill()
    daemon.start()
    # a process berthd's death ended was meant to run, whatever its policy: it runs again
    for app in ("keeps", "no-policy"):
        wait_for(lambda app=app: state_of(daemon, app) == "RUNNING")  # type: ignore[misc]
    assert state_of(daemon, "stays-stopped") == "none"


def test_scaling_up_does_not_restart_a_process_that_ended(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd()
    flag = tmp_path / "first-done"
    script = tmp_path / "run.sh"
    script.write_text(f"#!/bin/sh\nif [ ! -e {flag} ]; then touch {flag}; exit 0; fi\nexec sleep 1000\n")
    script.chmod(0o755)
    assert daemon.call(["apps:from-local", "scaled", str(script), "--restart-policy", "no"]).ok
    assert daemon.call("ps:start scaled").ok
    wait_for(lambda: state_of(daemon, "scaled", "main.1") == "EXITED")
    assert daemon.call("ps:scale scaled main=2").ok
    wait_for(lambda: state_of(daemon, "scaled", "main.2") == "RUNNING")
    assert state_of(daemon, "scaled", "main.1") == "EXITED"
    daemon.kill()
    daemon.start()
    wait_for(lambda: state_of(daemon, "scaled", "main.2") == "RUNNING")
    assert state_of(daemon, "scaled", "main.1") == "none"


def test_a_release_left_deeply_nested_does_not_stop_berthd_from_starting(
    deep_tmp_path: Path, start_berthd: Callable[..., Berthd], archive_server: str
) -> None:
    daemon = start_berthd()
    app_dir, live = deployed(daemon, "nested", archive_server)
    daemon.kill()
    # what a deploy cut short would leave, as releases.new_release makes it: a marker and its release
    name = "20260101000000-archive-abcdef"
    (app_dir / f".deploying-{name}").touch(mode=0o600)
    (app_dir / "releases" / name).mkdir(mode=0o700)
    deep_tree(app_dir / "releases" / name, 3000)

    daemon.start()
    assert daemon.call("ping").output == "pong"
    assert leftovers(app_dir) == []
    assert (app_dir / "current").resolve() == live
    wait_for(lambda: state_of(daemon, "nested", "web.1") == "RUNNING")


def test_a_leftover_that_cannot_be_removed_is_logged_and_the_other_apps_are_swept(
    deep_tmp_path: Path, start_berthd: Callable[..., Berthd], archive_server: str
) -> None:
    daemon = start_berthd()
    stuck_dir, _ = deployed(daemon, "a-stuck", archive_server)
    other_dir, _ = deployed(daemon, "b-other", archive_server)
    daemon.kill()
    name = "20260101000000-archive-abcdef"
    for app_dir in (stuck_dir, other_dir):
        (app_dir / f".deploying-{name}").touch(mode=0o600)
        (app_dir / "releases" / name).mkdir(mode=0o700)
        deep_tree(app_dir / "releases" / name, 2000)
    immutable = stuck_dir / "releases" / name / "immutable"
    immutable.touch()
    if subprocess.run(["chattr", "+i", str(immutable)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable files")  # which not even root may remove
    try:
        daemon.start()
        assert daemon.call("ping").output == "pong"
        assert "cannot remove" in daemon.log()
        assert leftovers(other_dir) == []
        assert f".deploying-{name}" in leftovers(stuck_dir)  # the next start tries again
    finally:
        subprocess.run(["chattr", "-i", str(immutable)], check=True)
    daemon.stop()
    daemon.start()
    assert leftovers(stuck_dir) == []


def test_a_failed_deploy_whose_release_cannot_be_removed_is_still_recorded(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    daemon = start_berthd()
    repo = repository_of(tmp_path / "repo", {"Procfile": PROCFILE.decode()})
    # a build as root (no --user) leaves a file not even root may remove, then fails
    build = "touch stuck && chattr +i stuck && exit 3"
    assert daemon.call("apps:create unremovable").ok  # not its first deploy: the failure is recorded
    answer = daemon.call(["git:sync", "unremovable", f"file://{repo}", "--build-cmd", build])
    app_dir = daemon.data_dir / "apps" / "unremovable"
    stuck = [release / "stuck" for release in (app_dir / "releases").iterdir()]
    try:
        if not stuck:
            pytest.skip("this file system has no immutable files")
        assert (answer.ok, answer.error) == (False, "invalid_argument"), answer.output
        assert source_detail(daemon, "unremovable")["status"] == "build failure"
        assert "cannot remove the failed release" in daemon.log()
        assert daemon.call("ping").output == "pong"
    finally:
        for path in stuck:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    daemon.stop()
    daemon.start()  # the marker stayed: this start sweeps the release
    assert leftovers(app_dir) == []
