"""Packaging and init: the systemd units, socket activation, sd_notify, the sysvinit script, install.sh."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import ROOT, Berthd

INIT = ROOT / "init"
INSTALL_SH = ROOT / "scripts" / "install.sh"
INSTALLED_BERTHD = "/opt/berthd/venv/bin/berthd"
PONG = {"ok": True, "output": "pong"}

# Stands in for systemd between fork and exec: the listening socket (passed at any fd number) moves to
# fd 3, LISTEN_PID names this very process (berthd keeps the pid across exec), then berthd runs.
ACTIVATE = """
import os, sys
fd, listen_pid = int(sys.argv[1]), sys.argv[2]
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid()) if listen_pid == "self" else listen_pid
os.execv(sys.executable, [sys.executable, "-m", "berthd", *sys.argv[3:]])
"""


def ask(path: Path, line: bytes = b"ping\n", timeout: float = 10.0) -> dict[str, object]:
    """Send one request line, read the one answer line, as a dokku-daemon client would."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        client.sendall(line)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = client.recv(4096)
            assert chunk, f"connection closed after {answer!r}"
            answer += chunk
    return json.loads(answer)


# --- systemd units ------------------------------------------------------------------------------------


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units, with ExecStart pointed at this venv's berthd (the installed one may not exist here)."""
    berthd = Path(sys.executable).with_name("berthd")
    if not berthd.exists():
        pytest.skip(f"no berthd script next to {sys.executable} (run `make setup`)")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    service = (INIT / "berthd.service").read_text()
    assert f"ExecStart={INSTALLED_BERTHD} " in service
    (unit_dir / "berthd.service").write_text(service.replace(INSTALLED_BERTHD, str(berthd)))
    shutil.copy(INIT / "berthd.socket", unit_dir / "berthd.socket")
    return unit_dir


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_analyze_verify_accepts_both_units(units: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        [analyze, "verify", "berthd.service", "berthd.socket"],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are only warnings (exit 0): any line about our units is a failure.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "berthd" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_units_wire_the_socket_to_the_service() -> None:
    service = unit_settings(INIT / "berthd.service")
    sock = unit_settings(INIT / "berthd.socket")
    assert service["Type"] == ["notify"]
    assert "berthd.socket" in service["Requires"] and "berthd.socket" in " ".join(service["After"])
    assert service["KillMode"] == ["mixed"]
    assert service["StateDirectory"] == ["berthd"] and service["RuntimeDirectory"] == ["berthd"]
    # The runtime directory holds the socket unit's socket: removing it on stop would orphan the socket.
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    for unwanted in ("DynamicUser", "User", "PrivateDevices", "ProtectHome", "ProtectClock"):
        assert unwanted not in service, f"{unwanted}= breaks a deploy daemon (see the comments in the unit)"
    exec_start = service["ExecStart"][0].split()
    assert (
        exec_start[exec_start.index("--socket") + 1] == sock["ListenStream"][0] == "/run/berthd/berthd.sock"
    )
    assert exec_start[exec_start.index("--socket-group") + 1] == sock["SocketGroup"][0] == "berth"
    assert exec_start[exec_start.index("--data-dir") + 1] == "/var/lib/berthd"
    assert sock["SocketMode"] == ["0660"]


# --- socket activation (LISTEN_FDS) -------------------------------------------------------------------


@pytest.fixture
def activation_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A listening UNIX socket bound by the test, as systemd's socket unit would hold it."""
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    yield listener, path
    listener.close()


def start_activated(
    listener: socket.socket, workdir: Path, listen_pid: str = "self"
) -> tuple[subprocess.Popen[bytes], Path]:
    """berthd with `listener` as fd 3; its own --socket is a different path, to tell the two apart."""
    own_socket = workdir / "own.sock"
    args = [
        sys.executable, "-c", ACTIVATE, str(listener.fileno()), listen_pid,
        "--socket", str(own_socket),
        "--data-dir", str(workdir / "data"),
        "--log-file", str(workdir / "berthd.log"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for inherited in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        env.pop(inherited, None)
    with open(workdir / "berthd.stderr", "ab") as stderr:
        proc = subprocess.Popen(
            args, pass_fds=(listener.fileno(),), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr
        )
    return proc, own_socket


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def wait_until_listening(
    path: Path, proc: subprocess.Popen[bytes], stderr: Path, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"berthd exited with {proc.returncode}: {stderr.read_text()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.02)
    raise TimeoutError(f"berthd did not listen on {path}: {stderr.read_text()}")


def test_berthd_serves_on_a_socket_passed_by_systemd(
    activation_socket: tuple[socket.socket, Path], tmp_path: Path
) -> None:
    listener, path = activation_socket
    proc, own_socket = start_activated(listener, tmp_path)
    try:
        # The socket already listens, so a client may connect before berthd is up: it waits in the backlog.
        assert ask(path) == PONG
        assert ask(path, b'{"cmd": "ping", "id": "a-1"}\n') == {**PONG, "id": "a-1"}
        assert not own_socket.exists(), "berthd bound its own socket although it was given one"
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "berthd.stderr").read_text()
    # The socket file belongs to systemd's socket unit: berthd must leave it in place.
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert "a socket from systemd" in (tmp_path / "berthd.log").read_text()


def test_a_restarted_berthd_takes_over_the_same_socket(
    activation_socket: tuple[socket.socket, Path], tmp_path: Path
) -> None:
    """What Restart=on-failure does: the socket stays open in systemd and the next berthd gets it."""
    listener, path = activation_socket
    for attempt in ("first", "second"):
        workdir = tmp_path / attempt
        workdir.mkdir()
        proc, _ = start_activated(listener, workdir)
        try:
            assert ask(path) == PONG
        finally:
            assert stop(proc) == 0, (workdir / "berthd.stderr").read_text()


def test_a_socket_meant_for_another_process_is_not_adopted(
    activation_socket: tuple[socket.socket, Path], tmp_path: Path
) -> None:
    """LISTEN_PID names another pid (the variables leaked from a parent): berthd binds its own socket."""
    listener, _ = activation_socket
    proc, own_socket = start_activated(listener, tmp_path, listen_pid="1")
    try:
        wait_until_listening(own_socket, proc, tmp_path / "berthd.stderr")
        assert ask(own_socket) == PONG
    finally:
        assert stop(proc) == 0, (tmp_path / "berthd.stderr").read_text()
    assert not own_socket.exists(), "berthd leaves no socket file of its own behind"


# --- Type=notify (NOTIFY_SOCKET) ----------------------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket: a file, or in the abstract namespace."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        receiver.bind(address)
    else:
        name = f"berthd-test-notify-{os.getpid()}-{id(receiver)}"
        receiver.bind("\0" + name)
        address = "@" + name
    receiver.settimeout(15.0)
    yield receiver, address
    receiver.close()


def test_berthd_tells_systemd_when_ready_and_when_stopping(
    notify_socket: tuple[socket.socket, str], start_berthd: Callable[..., Berthd]
) -> None:
    receiver, address = notify_socket
    daemon = start_berthd(env={"NOTIFY_SOCKET": address})
    assert receiver.recv(4096) == b"READY=1"
    # READY=1 comes once berthd listens: a client right after it is served.
    assert ask(daemon.socket) == PONG
    assert daemon.stop(signal.SIGTERM) == 0
    assert receiver.recv(4096) == b"STOPPING=1"


# --- sysvinit script and install.sh -------------------------------------------------------------------


@pytest.mark.parametrize("script", [INIT / "berthd.init", INSTALL_SH], ids=["berthd.init", "install.sh"])
def test_shell_scripts_parse(script: Path) -> None:
    shells = ["bash"] + (["sh"] if script.read_text().startswith("#!/bin/sh") else [])
    for shell in shells:
        result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{shell} -n {script.name}: {result.stderr}"
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("script", [INIT / "berthd.init", INSTALL_SH], ids=["berthd.init", "install.sh"])
def test_shell_scripts_pass_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_install_sh_refuses_to_run_without_root() -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop to nobody")
        nobody = pwd.getpwnam("nobody")
        drop = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    else:
        drop = []
    # The script comes on stdin, so nobody needs no read access to the checkout.
    with open(INSTALL_SH, "rb") as script:
        result = subprocess.run(
            [*drop, "bash", "-s"], stdin=script, cwd="/", env=env, capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert "must run as root" in result.stderr
    assert "DESTDIR" in result.stderr  # says how to stage without root
    assert result.stdout == ""  # nothing was done


def test_init_script_starts_reports_and_stops_berthd(tmp_path: Path) -> None:
    ssd = shutil.which("start-stop-daemon")
    if ssd is None:
        pytest.skip("start-stop-daemon (Debian's dpkg) is not installed")
    usage = subprocess.run([ssd, "--help"], capture_output=True, text=True).stdout
    if "--notify-await" not in usage or "--output" not in usage:
        pytest.skip("this start-stop-daemon lacks --notify-await/--output")
    berthd = Path(sys.executable).with_name("berthd")
    if not berthd.exists():
        pytest.skip(f"no berthd script next to {sys.executable}")
    socket_path = tmp_path / "run" / "berthd.sock"
    # The script as installed, with its paths (and its /etc/default file) moved into the test's directory.
    text = (INIT / "berthd.init").read_text()
    for variable, value in {
        "DAEMON": berthd,
        "PIDFILE": tmp_path / "berthd.pid",
        "BERTHD_SOCK_PATH": socket_path,
        "BERTHD_SOCKET_GROUP": "",
        "BERTHD_DATA_DIR": tmp_path / "data",
        "BERTHD_OUTPUT": tmp_path / "berthd.out",
    }.items():
        lines = [line for line in text.splitlines() if line.startswith(f"{variable}=")]
        assert len(lines) == 1, variable
        text = text.replace(lines[0], f"{variable}={value}")
    text = text.replace("/etc/default/$NAME", str(tmp_path / "default"))
    script = tmp_path / "berthd.init"
    script.write_text(text)
    script.chmod(0o755)

    def run(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), action], capture_output=True, text=True, timeout=60)

    try:
        started = run("start")
        output = tmp_path / "berthd.out"
        assert started.returncode == 0, (
            started.stdout + started.stderr + (output.read_text() if output.exists() else "")
        )
        # start returns once berthd sent READY=1 (--notify-await): it answers at once.
        assert ask(socket_path, timeout=2.0) == PONG
        assert run("start").returncode == 0  # already running: nothing to do
        assert run("status").returncode == 0
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert run("status").returncode == 3  # LSB: not running
    assert not socket_path.exists()
    assert not (tmp_path / "berthd.pid").exists()
    assert "berthd stopped" in (tmp_path / "berthd.out").read_text()
