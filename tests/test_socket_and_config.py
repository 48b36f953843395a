"""The socket's place and permissions, stale and live sockets, configuration sources, shutdown."""

from __future__ import annotations

import contextlib
import grp
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon_proc import ROOT, Berthd, berthd_command
from tests.wire import RawConnection


def test_socket_has_the_default_mode(berthd: Berthd) -> None:
    mode = os.stat(berthd.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_socket_mode_and_group_are_applied(start_berthd: Callable[..., Berthd]) -> None:
    group = grp.getgrgid(os.getgid()).gr_name if os.geteuid() != 0 else "nogroup"
    daemon = start_berthd(extra_args=["--socket-mode", "0600", "--socket-group", group])
    info = os.stat(daemon.socket)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_gid == grp.getgrnam(group).gr_gid
    # no temporary socket is left beside it
    assert sorted(p.name for p in daemon.socket.parent.iterdir()) == ["berthd.sock"]


def test_socket_is_never_seen_with_wider_permissions(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    """Watch the socket's folder while berthd starts: every socket that appears is already private."""
    workdir = tmp_path / "watched"
    (workdir / "run").mkdir(parents=True)
    seen: set[int] = set()
    done = threading.Event()

    def scan() -> None:
        for entry in os.scandir(workdir / "run"):
            with contextlib.suppress(FileNotFoundError):
                seen.add(stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))

    def watch() -> None:
        while not done.is_set():
            scan()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        daemon = Berthd(workdir, extra_args=["--socket-mode", "0600"]).start()
    finally:
        done.set()
        watcher.join()
    scan()  # at least once with the socket in place, however the threads were scheduled
    daemon.stop()
    assert seen and seen <= {0o600}


def test_a_stale_socket_is_replaced(tmp_path: Path, start_berthd: Callable[..., Berthd]) -> None:
    workdir = tmp_path / "berthd"
    (workdir / "run").mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(workdir / "run" / "berthd.sock"))
    stale.close()  # the file stays, nobody listens
    daemon = start_berthd()
    assert daemon.call("ping").output == "pong"


def test_a_live_socket_makes_start_up_fail(berthd: Berthd) -> None:
    result = subprocess.run(
        [*berthd_command(), "--socket", str(berthd.socket), "--data-dir", str(berthd.workdir / "other")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "already listening" in result.stderr
    assert berthd.call("ping").output == "pong"


def test_a_regular_file_in_the_way_is_not_clobbered(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    result = subprocess.run(
        [*berthd_command(), "--socket", str(path), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "not a socket" in result.stderr
    assert path.read_text() == "precious"


def test_settings_from_a_toml_file_and_flags_win(tmp_path: Path, start_berthd: Callable[..., Berthd]) -> None:
    config = tmp_path / "berthd.toml"
    config.write_text('max_line = 100\nsocket_mode = "0640"\n')
    daemon = start_berthd(extra_args=["--config", str(config), "--socket-mode", "0600"])
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    with RawConnection(daemon.socket) as conn:
        assert conn.request(b"apps:create " + b"a" * 200)["error"] == "line_too_long"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--socket-mode", "99x"], "octal"),
        (["--max-clients", "0"], "max_clients"),
        (["--config", "/nonexistent/berthd.toml"], "cannot read config file"),
    ],
)
def test_bad_configuration_is_refused_with_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [*berthd_command(), "--socket", str(tmp_path / "s.sock"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error:")
    assert message in result.stderr


def test_sigterm_finishes_the_command_in_progress_and_exits_0(berthd: Berthd) -> None:
    with RawConnection(berthd.socket) as conn:
        assert conn.request(b"ping")["output"] == "pong"  # the connection is accepted and served
        conn.send(b"apps:create last-one\n")
        assert berthd.proc is not None
        berthd.proc.send_signal(signal.SIGTERM)
        assert conn.read_message() == {"ok": True, "output": "Creating last-one... done"}
    assert berthd.stop() == 0
    assert not berthd.socket.exists()
    berthd.start()
    assert berthd.call("apps:list").output == "last-one"


def test_sigint_stops_accepting_and_exits_0(berthd: Berthd) -> None:
    assert berthd.stop(signal.SIGINT) == 0
    with pytest.raises(OSError):
        RawConnection(berthd.socket)


def test_caller_identity_is_logged(berthd: Berthd) -> None:
    berthd.call("ping")
    deadline = time.monotonic() + 5
    while f"uid={os.getuid()} pid=" not in berthd.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"uid={os.getuid()} pid=" in berthd.log()
