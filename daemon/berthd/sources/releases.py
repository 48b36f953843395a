"""An app's code on disk: each deploy unpacks into a fresh release folder; `current` points at the live one.

The switch is one atomic rename of a symlink, so a failed deploy never touches the running version,
and processes always start from `current`. Old releases are pruned apart from the switch: deleting
thousands of files takes long, and the switch is done under the global lock while pruning need not be.
A release is whatever its archive, checkout or build made, at any depth: it is removed with
`trees.remove_tree`, never `shutil.rmtree` (whose recursion a deep tree exhausts).
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from berthd.store.trees import remove_or_log, remove_tree

KEEP = 2  # the live release and the one before it
DEPLOYING_PREFIX = ".deploying-"
INCOMING_PREFIX = ".incoming-"  # a download in progress (git:from-archive)
CURRENT_TEMPORARY_PREFIX = ".current-"


def releases_dir(app_dir: Path) -> Path:
    return app_dir / "releases"


def current_link(app_dir: Path) -> Path:
    return app_dir / "current"


def _deploying_marker(app_dir: Path, release_name: str) -> Path:
    return app_dir / f"{DEPLOYING_PREFIX}{release_name}"


def new_release(app_dir: Path, label: str) -> Path:
    """A fresh release folder, private to berthd until it is handed to the app. A marker says a deploy
    fills it: one that berthd did not live to finish or discard is swept at the next start."""
    name = f"{time.strftime('%Y%m%d%H%M%S')}-{label}-{secrets.token_hex(3)}"
    folder = releases_dir(app_dir) / name
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(_deploying_marker(app_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    folder.mkdir(mode=0o700)
    return folder


def activate(app_dir: Path, release: Path) -> None:
    """`current` now points at `release`; the old releases stay until `prune`."""
    link = current_link(app_dir)
    temporary = app_dir / f"{CURRENT_TEMPORARY_PREFIX}{secrets.token_hex(4)}"
    os.symlink(os.path.relpath(release, app_dir), temporary)
    os.replace(temporary, link)
    _deploying_marker(app_dir, release.name).unlink(missing_ok=True)


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
        remove_or_log(folder)


def discard(release: Path) -> None:
    """A release that will not go live removed, then its marker; an `OSError` leaves the marker, so the
    next start sweeps what is left."""
    remove_tree(release)
    _deploying_marker(release.parent.parent, release.name).unlink(missing_ok=True)


def sweep_interrupted(app_dir: Path) -> list[str]:
    """What deploys cut short by berthd's end left in `app_dir` (a release being filled that `current`
    does not point to, its build folder, a download, a half-made `current` link) removed; the names of
    what was removed, relative to `app_dir`. What cannot be removed is logged and left (with its
    marker, so the next start tries again)."""
    removed: list[str] = []
    live = live_release(app_dir)
    for marker in sorted(app_dir.glob(f"{DEPLOYING_PREFIX}*")):
        name = marker.name.removeprefix(DEPLOYING_PREFIX)
        release = releases_dir(app_dir) / name
        build = app_dir / "builds" / name
        gone = True
        for folder in (release, build):
            if folder.exists() and (folder != release or release.resolve() != live):
                if remove_or_log(folder):
                    removed.append(str(folder.relative_to(app_dir)))
                else:
                    gone = False
        if gone:
            marker.unlink(missing_ok=True)
    for pattern in (f"{INCOMING_PREFIX}*", f"{CURRENT_TEMPORARY_PREFIX}*"):
        for leftover in sorted(app_dir.glob(pattern)):
            if remove_or_log(leftover):
                removed.append(leftover.name)
    return removed
