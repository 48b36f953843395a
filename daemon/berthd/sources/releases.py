"""An app's code on disk: each deploy unpacks into a fresh release folder; `current` points at the live one.

The switch is one atomic rename of a symlink, so a failed deploy never touches the running version,
and processes always start from `current`. Old releases are pruned apart from the switch: deleting
thousands of files takes long, and the switch is done under the global lock while pruning need not be.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

KEEP = 2  # the live release and the one before it


def releases_dir(app_dir: Path) -> Path:
    return app_dir / "releases"


def current_link(app_dir: Path) -> Path:
    return app_dir / "current"


def new_release(app_dir: Path, label: str) -> Path:
    folder = releases_dir(app_dir) / f"{time.strftime('%Y%m%d%H%M%S')}-{label}-{secrets.token_hex(3)}"
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.mkdir(mode=0o700)  # berthd's until the deploy hands it to the app
    return folder


def activate(app_dir: Path, release: Path) -> None:
    """`current` now points at `release`; the old releases stay until `prune`."""
    link = current_link(app_dir)
    temporary = app_dir / f".current-{secrets.token_hex(4)}"
    os.symlink(os.path.relpath(release, app_dir), temporary)
    os.replace(temporary, link)


def live_release(app_dir: Path) -> Path | None:
    link = current_link(app_dir)
    return link.resolve() if link.is_symlink() else None


def prune(app_dir: Path) -> None:
    """Delete all but the live release and the newest others, KEEP in all."""
    live = live_release(app_dir)
    folders = sorted(releases_dir(app_dir).iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    kept = 0
    for folder in folders:
        if folder.resolve() == live or kept < KEEP:
            kept += 1
            continue
        shutil.rmtree(folder, ignore_errors=True)


def discard(release: Path) -> None:
    shutil.rmtree(release, ignore_errors=True)
