"""Who may read what under the data dir: berthd, and each app's own user for that app's code; nobody else.

berthd works under umask 077, so everything it makes (the database, logs, job outputs, clones,
downloads) is its own from the first instant. What an app's processes need is then opened to the app's
group, never to others, and only ever loosened from private, never tightened after the fact:

    DATA/              0711  berthd's; traversed by app users on their way to their app, listed by none
    DATA/apps/         0711
    DATA/apps/APP/     0750  berthd's, group = the app user's group (berthd's own for apps with no --user)
      releases/ REL/   0750  the code: group-readable, nothing writable by the app (a build's user owns
                             its release while the build runs)
      jobs/ JOB/, builds/ REL/   2750  the output files of a run or a build 0640 (group: the app's,
                             by the set-gid bit)
      repo.git logs/ .incoming-*   0700 / 0600: berthd's only

The app's folder belongs to berthd, not to the app's user: a user who owned it could swap a folder
berthd writes into (its logs) for a link to anywhere. The group is the app user's primary group (or the
one given with `--user USER:GROUP`); on hosts where that group is shared, its members share the access.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from berthd.store import trees

PRIVATE_UMASK = 0o077
DATA_DIR_MODE = 0o711
APP_DIR_MODE = 0o750
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# A job's folder: what berthd makes in it takes the folder's group (set-gid), so its outputs are the
# app group's to read from the instant they exist.
OUTPUT_DIR_MODE = 0o2750
OUTPUT_FILE_MODE = 0o640
# What under an app's folder its processes run, and where the outputs of its runs and builds are (the
# rest of it is berthd's, and mounts are the app's own).
APP_CODE_PARTS = ("releases", "bin")
OUTPUT_PARTS = ("jobs", "builds")


def app_group(user: str | None) -> int:
    """The group an app's files are opened to: its user's (or the one named), else berthd's own."""
    if user and os.geteuid() == 0:
        name, _, group = user.partition(":")
        with contextlib.suppress(KeyError):
            return grp.getgrnam(group).gr_gid if group else pwd.getpwnam(name).pw_gid
        if group.isdigit():  # ids the host has no account for
            return int(group)
    return os.getegid()


def open_folder(folder: Path, gid: int, mode: int = APP_DIR_MODE) -> None:
    """`folder` (made private when missing) is berthd's, readable by group `gid`."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=PRIVATE_DIR_MODE)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if (info.st_uid, info.st_gid) != (os.geteuid(), gid):
            os.fchown(fd, os.geteuid(), gid)
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def open_output_folder(folder: Path, gid: int) -> None:
    """A run's or a build's own folder (made when missing): the app's group reads what berthd writes in it."""
    open_folder(folder, gid, OUTPUT_DIR_MODE)


def open_path(top: Path, folder: Path, gid: int) -> None:
    """Every folder from `top` down to `folder` (made when missing) opened to group `gid`."""
    relative = folder.relative_to(top)
    open_folder(top, gid)
    current = top
    for part in relative.parts:
        current = current / part
        open_folder(current, gid)


def hand_over(tree: Path, uid: int, gid: int) -> None:
    """Every folder and file of `tree` owned by `uid`:`gid`, readable by the group, nothing for others,
    no set-id bits; links are never followed (each entry is opened with O_NOFOLLOW and changed through
    its descriptor) and hard-linked files are left alone, so a tree its user could change while this
    runs cannot redirect it. Any depth (`trees.walk`)."""
    _hand_over_entry(tree, None, uid, gid)
    if os.path.isdir(tree) and not os.path.islink(tree):
        for folder_fd, name, kind in trees.walk(tree):
            if kind != trees.LEAVE:
                _hand_over_entry(Path(name), folder_fd, uid, gid)


def _hand_over_entry(name: Path, dir_fd: int | None, uid: int, gid: int) -> None:
    try:
        seen = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not (stat.S_ISDIR(seen.st_mode) or stat.S_ISREG(seen.st_mode)):
            return  # a link, a FIFO, a socket, a device: never opened
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return  # gone, or swapped for a link since (ELOOP): nothing to hand over
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            mode = 0o750
        elif stat.S_ISREG(info.st_mode):
            # a file linked from elsewhere too (a root file, where protected_hardlinks is off) is not
            # ours to give away; a tree berthd made has none
            if info.st_nlink > 1:
                return
            executable = info.st_mode & 0o100
            mode = 0o640 | (0o110 if executable else 0)
        else:
            return
        if (info.st_uid, info.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)  # before the mode: a change of owner clears set-id bits anyway
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


class NotAFolder(Exception):
    """A mount's place holds something other than a folder (a link, a file): nothing was changed."""


def make_mount(app_dir: Path, parts: tuple[str, ...], gid: int, uid: int, owner_gid: int) -> None:
    """`app_dir/mounts/PARTS...` made where missing: the folders on the way berthd's, open to group
    `gid` (or, when one is a mount nested in another, left as its user has it), the last one
    `uid`:`owner_gid`'s, 0700 when made. Each step is opened beneath the one before it with
    O_NOFOLLOW, and changed through its descriptor: a link planted anywhere on the way, at any moment,
    makes this fail (ELOOP, ENOTDIR) instead of redirecting a mkdir or a chown."""
    fd = _open_folder_at(None, str(app_dir))
    try:
        for index, part in enumerate(("mounts", *parts)):
            last = index == len(parts)
            try:
                os.mkdir(part, PRIVATE_DIR_MODE, dir_fd=fd)
            except FileExistsError:
                pass
            except FileNotFoundError:  # the folder it was made in was removed meanwhile
                raise NotAFolder(f"the folder above {part} vanished while it was made: refused") from None
            child = _open_folder_at(fd, part)
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            if last:
                if (info.st_uid, info.st_gid) != (uid, owner_gid):
                    os.fchown(fd, uid, owner_gid)
            elif info.st_uid == os.geteuid():  # not a user's own mount: berthd's, the app's group's
                if info.st_gid != gid:
                    os.fchown(fd, os.geteuid(), gid)
                if stat.S_IMODE(info.st_mode) != APP_DIR_MODE:
                    os.fchmod(fd, APP_DIR_MODE)
    finally:
        os.close(fd)


def _open_folder_at(dir_fd: int | None, name: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotAFolder(f"{name} is not a folder (a link or a file): refused") from None
        if exc.errno == errno.ENOENT:  # made a moment ago, gone: someone else is at work in there
            raise NotAFolder(f"{name} vanished while it was made: refused") from None
        raise


def close_to_others(path: Path) -> None:
    """Take every permission of others (and of the group) from `path` and all under it, links left
    alone: for what older berthd versions left world-readable in folders only berthd writes to."""
    _close(str(path), None)
    if path.is_dir() and not path.is_symlink():
        for folder_fd, name, kind in trees.walk(path):
            if kind != trees.LEAVE:
                _close(name, folder_fd)


def _close(name: str, folder_fd: int | None) -> None:
    with contextlib.suppress(OSError):  # gone, a link (ELOOP), a socket: nothing to close
        info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
            return
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
        try:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & 0o700)
        finally:
            os.close(fd)


def make_public_folders(folder: Path) -> None:
    """`folder` and the folders above it that are missing made 0755, as they were before berthd worked
    under umask 077: for the socket's folder (callers must reach the socket; its own mode and group say
    who may connect) and the folders above the data dir."""
    missing = [each for each in (folder, *folder.parents) if not each.exists()]
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):
            each.mkdir(mode=PRIVATE_DIR_MODE)
            os.chmod(each, 0o755)


def prepare_data_dir(data_dir: Path) -> None:
    """The data dir and `apps/`, made (or fixed) with their modes; the database files berthd's only."""
    make_public_folders(data_dir.parent)
    with contextlib.suppress(FileExistsError):
        data_dir.mkdir(mode=PRIVATE_DIR_MODE)
    os.chmod(data_dir, DATA_DIR_MODE)
    apps = data_dir / "apps"
    with contextlib.suppress(FileExistsError):
        apps.mkdir(mode=PRIVATE_DIR_MODE)
    os.chmod(apps, DATA_DIR_MODE)
    for entry in data_dir.iterdir():
        if entry.name != "apps" and not entry.is_symlink() and entry.stat().st_mode & 0o077:
            close_to_others(entry)


def fix_app_dir(app_dir: Path, gid: int) -> None:
    """An app's folder as this module makes it, for an installation from before these modes (every
    folder 0755, every file 0644) or an app whose user changed: what the app runs is handed to its
    group, what only berthd reads is closed to all others. Parts already right are not walked."""
    open_folder(app_dir, gid)
    for entry in app_dir.iterdir():
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        if entry.name in (*APP_CODE_PARTS, *OUTPUT_PARTS, "mounts"):
            if not info.st_mode & 0o007 and info.st_gid == gid:
                continue  # right already (the app's user may have changed since: then its group did)
        elif not info.st_mode & 0o077:
            continue
        if entry.name in APP_CODE_PARTS:
            open_folder(entry, gid)
            for child in entry.iterdir():
                hand_over(child, os.geteuid(), gid)
        elif entry.name in OUTPUT_PARTS:
            _fix_outputs(entry, gid)
        elif entry.name == "mounts":
            _fix_mounts(entry, gid)
        else:
            close_to_others(entry)


def _fix_outputs(outputs: Path, gid: int) -> None:
    """Each run's (or build's) folder and output files as `open_output_folder` and jobs.py make them."""
    open_folder(outputs, gid)
    for folder in outputs.iterdir():
        if folder.is_dir() and not folder.is_symlink():
            open_output_folder(folder, gid)
            for output in folder.iterdir():
                if output.is_file() and not output.is_symlink():
                    os.chown(output, os.geteuid(), gid, follow_symlinks=False)
                    os.chmod(output, OUTPUT_FILE_MODE)


def _fix_mounts(mounts: Path, gid: int) -> None:
    """The folders berthd made on the way to each mount opened to the group; each mount (its user's own
    folder) closed to others, its content left as its user made it."""
    for root, dirs, _ in os.walk(mounts):
        open_folder(Path(root), gid)
        for name in list(dirs):
            folder = Path(root, name)
            info = folder.lstat()
            if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid():
                dirs.remove(name)  # a mount: not walked into
                if not stat.S_ISLNK(info.st_mode):
                    os.chmod(folder, stat.S_IMODE(info.st_mode) & 0o770)
