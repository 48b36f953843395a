"""berthd installed as a user installs it: a wheel built from the checkout, in a fresh venv elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built as `pip install .` builds it, from a copy of the checkout without what earlier builds
    left (a stale build/ folder would put modules in the wheel that the project's own rules leave out)."""
    source = tmp_path_factory.mktemp("source") / "berthd"
    left_behind = shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "run", "var", ".test-engine", ".*_cache"
    )
    shutil.copytree(ROOT, source, ignore=left_behind, symlinks=True)
    wheels = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=wheels,
    )
    assert build.returncode == 0, build.stderr
    (built,) = wheels.glob("berthd-*.whl")
    return built


def test_the_wheel_holds_every_module_of_both_packages_under_its_import_name(wheel: Path) -> None:
    """daemon/berthd/X.py is `berthd/X.py` in the wheel, protocol/berth/X.py is `berth/X.py`: nothing left
    out (the hand-kept package list once missed whole wings), nothing under the folder names."""
    with zipfile.ZipFile(wheel) as archive:
        names = {name for name in archive.namelist() if name.endswith(".py")}
    expected = {
        f"{top}/{path.relative_to(ROOT / folder / top).as_posix()}"
        for folder, top in (("daemon", "berthd"), ("protocol", "berth"))
        for path in (ROOT / folder / top).rglob("*.py")
    }
    assert len(expected) > 70
    assert expected - names == set()
    assert {n for n in names if n.startswith(("daemon/", "protocol/", "tests/", "bench/"))} == set()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A venv outside the checkout with the wheel (and its dependencies) installed: its bin folder."""
    base = tmp_path_factory.mktemp("wheel")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        cwd=base,
    )
    assert install.returncode == 0, install.stderr
    return venv / "bin"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_the_installed_berthd_prints_its_version(installed: Path, tmp_path: Path) -> None:
    answer = subprocess.run(
        [str(installed / "berthd"), "-v"], capture_output=True, text=True, cwd=tmp_path, env=_clean_env()
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("Version ")


def test_the_installed_berthd_serves_and_its_clients_get_pong(installed: Path, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "berthd.sock"
    env = _clean_env()
    daemon = subprocess.Popen(
        [str(installed / "berthd"), "--socket", str(sock), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert daemon.poll() is None, daemon.stderr.read().decode() if daemon.stderr else ""
            assert time.monotonic() < deadline, "berthd did not listen within 20 s"
            time.sleep(0.05)
        cli = subprocess.run(
            [str(installed / "berth"), "--socket", str(sock), "ping"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip() == "pong"
        script = (
            f"from berth import Client\nwith Client({str(sock)!r}) as b:\n    print(b.call('ping').output)\n"
        )
        library = subprocess.run(
            [str(installed / "python"), "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert library.returncode == 0, library.stderr
        assert library.stdout.strip() == "pong"
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=20) == 0


def test_make_install_stages_a_working_berthd_under_destdir(tmp_path: Path) -> None:
    """`make install`'s script with DESTDIR (as a packager runs it): a venv whose berthd starts, the units
    and the client link, all under the staging folder and naming the final paths."""
    stage = tmp_path / "stage"
    env = {**_clean_env(), "DESTDIR": str(stage), "PREFIX": "/opt/berthd", "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
    venv = stage / "opt" / "berthd" / "venv"
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-m", "berthd", "-v"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("Version ")
    client = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", "import berth.cli, berthd.main; print('ok')"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert client.stdout.strip() == "ok", client.stderr
    assert (stage / "etc" / "systemd" / "system" / "berthd.service").is_file()
    assert os.readlink(stage / "usr" / "local" / "bin" / "berth") == "/opt/berthd/venv/bin/berth"
    assert "/opt/berthd/venv" in (venv / "bin" / "berthd").read_text().splitlines()[0]
