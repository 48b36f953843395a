from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd

pytest_plugins = ["tests.docker_engine"]


@pytest.fixture
def start_berthd(tmp_path: Path) -> Iterator[Callable[..., Berthd]]:
    """Start berthd processes (stopped at the end of the test): `start_berthd(extra_args=[...], env={...})`."""
    started: list[Berthd] = []

    def start(name: str = "berthd", root: Path | None = None, **kwargs: object) -> Berthd:
        workdir = (root or tmp_path) / name
        workdir.mkdir(exist_ok=True)
        daemon = Berthd(workdir, **kwargs).start()  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A temporary folder that other users may traverse (pytest's are 0700), for berthd data dirs whose
    apps run as another user: `start_berthd(root=reachable_tmp)`."""
    folder = Path(tempfile.mkdtemp(prefix="berthd-test-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def berthd(start_berthd: Callable[..., Berthd]) -> Berthd:
    """One berthd on a temporary socket with its own data dir."""
    return start_berthd()
