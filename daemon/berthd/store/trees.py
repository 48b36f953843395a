"""Walking and removing trees that come from users (releases, git checkouts, build and job folders) at
any depth: iteratively, never by recursion (which a tree a few thousand folders deep exhausts), and
through descriptors, never by path (which past PATH_MAX cannot name it) nor through a link.

Each folder is opened `O_NOFOLLOW | O_DIRECTORY` from the descriptor of the one above it. At most
OPEN_FOLDERS descriptors are held whatever the depth: the ones further up are closed on the way down and
opened again through `..` on the way up, and each must then be the very folder left (same device and
inode), else the walk stops with `TreeMoved`: a user who moves a folder while the walk is in it cannot
lead the walk out of the tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from berthd.log import LOG

OPEN_FOLDERS = 64
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# what `walk` yields with each entry
ENTER = "enter"  # a folder, before what is in it
LEAVE = "leave"  # a folder, after what is in it
OTHER = "other"  # anything else: a file, a link, a FIFO...


class TreeMoved(OSError):
    """A folder of the tree was moved or replaced while the walk was in it."""


@dataclass
class _Folder:
    name: str  # in the folder above
    identity: tuple[int, int]
    fd: int | None
    names: list[tuple[str, bool]] = field(default_factory=list)  # still to visit: (name, is a folder)


def walk(top: Path) -> Iterator[tuple[int, str, str]]:
    """Every entry below the folder `top` (not `top` itself) as (descriptor of its folder, its name,
    ENTER | LEAVE | OTHER), folders before and after what they hold. The descriptor is valid only until
    the next step; what the caller does to an entry at ENTER is done before it is opened. Entries that
    vanish or change kind meanwhile are passed over."""
    fd = os.open(top, FOLDER_FLAGS)
    stack = [_Folder("", _identity(fd), fd)]
    try:
        stack[0].names = _listing(fd)
        while stack:
            here = stack[-1]
            assert here.fd is not None  # the innermost folder is always open
            if not here.names:
                stack.pop()
                if stack:
                    _reopen_parent(stack[-1], here.fd)
                os.close(here.fd)
                here.fd = None
                if stack:
                    yield stack[-1].fd, here.name, LEAVE  # type: ignore[misc]  # reopened just now
                continue
            name, is_folder = here.names.pop()
            if not is_folder:
                yield here.fd, name, OTHER
                continue
            yield here.fd, name, ENTER
            try:
                below = os.open(name, FOLDER_FLAGS, dir_fd=here.fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    continue  # gone, or swapped for a link or a file since it was listed
                raise
            folder = _Folder(name, _identity(below), below)
            stack.append(folder)
            if len(stack) > OPEN_FOLDERS:
                far = stack[-OPEN_FOLDERS - 1]
                if far.fd is not None:
                    os.close(far.fd)
                    far.fd = None
            folder.names = _listing(below)
    finally:
        for folder in stack:
            if folder.fd is not None:
                os.close(folder.fd)


def _listing(fd: int) -> list[tuple[str, bool]]:
    with os.scandir(fd) as entries:
        return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _reopen_parent(parent: _Folder, child_fd: int) -> None:
    if parent.fd is not None:
        return
    fd = os.open("..", FOLDER_FLAGS, dir_fd=child_fd)
    if _identity(fd) != parent.identity:
        os.close(fd)
        raise TreeMoved(errno.ESTALE, f"the folder {parent.name!r} moved while it was walked")
    parent.fd = fd


def remove_tree(path: Path) -> None:
    """`path` and everything in it gone (a link or a file: only itself); nothing outside it touched.
    Missing already is fine. An entry that cannot be removed raises its `OSError`."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink(missing_ok=True)
        return
    for folder_fd, name, kind in walk(path):
        with contextlib.suppress(FileNotFoundError):
            if kind == OTHER:
                os.unlink(name, dir_fd=folder_fd)
            elif kind == LEAVE:
                os.rmdir(name, dir_fd=folder_fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


def remove_or_log(path: Path) -> bool:
    """`path` removed as `remove_tree` does; whether it was (why not is logged, and the rest stays)."""
    try:
        remove_tree(path)
    except OSError as exc:
        LOG.error("cannot remove %s: %s", path, exc)
        return False
    return True
