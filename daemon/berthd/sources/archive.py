"""Source archives: downloaded as a stream with a size limit, unpacked without trusting a single name.

Refused: absolute names, `..`, links that leave the tree (or point anywhere absolute), devices, FIFOs,
more bytes than the limit once unpacked (counted while writing, not believed from headers), more
entries than the limit. Formats: .tar.gz/.tgz/.tar (and .tar.bz2/.tar.xz), .zip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from berthd.server.params import without_credentials

SCHEMES = ("http", "https", "file")
SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")
READ_BLOCK = 1024 * 1024
DOWNLOAD_TIMEOUT = 60.0


class ArchiveError(ValueError):
    pass


def check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ArchiveError(f"unsupported URL scheme {parts.scheme!r}: use {', '.join(SCHEMES)}")
    if parts.scheme != "file" and not parts.hostname:
        raise ArchiveError(f"no host in URL {without_credentials(url)!r}")
    if not parts.path.lower().endswith(SUFFIXES):
        raise ArchiveError(
            f"not an archive URL {without_credentials(url)!r}: expected one of {', '.join(SUFFIXES)}"
        )
    return parts


def download(url: str, target: Path, max_bytes: int, progress: Callable[[int, int | None], None]) -> int:
    """Stream the archive into `target`; its size. Never more than `max_bytes` are written."""
    parts = check_url(url)
    try:
        if parts.scheme == "file":
            source = open(urllib.request.url2pathname(parts.path), "rb")  # noqa: SIM115 - closed below
            total: int | None = os.fstat(source.fileno()).st_size
        else:
            request = urllib.request.Request(url, headers={"User-Agent": "berthd"})
            source = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT)  # noqa: S310 - scheme checked
            length = source.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
    except urllib.error.HTTPError as exc:
        raise ArchiveError(f"download failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise ArchiveError(f"download failed: {reason}") from None
    if total is not None and total > max_bytes:
        source.close()
        raise ArchiveError(f"archive is {total} bytes, over the limit of {max_bytes}")
    written = 0
    try:
        with source, open(target, "wb") as out:
            while block := source.read(READ_BLOCK):
                written += len(block)
                if written > max_bytes:
                    raise ArchiveError(f"archive is over the limit of {max_bytes} bytes")
                out.write(block)
                progress(written, total)
    except OSError as exc:
        raise ArchiveError(f"download failed: {exc}") from None
    return written


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise ArchiveError(f"archive entry {name!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"archive entry {name!r} leaves the archive's folder")
    if "\x00" in name:
        raise ArchiveError("archive entry name contains a NUL byte")
    return path


def _check_link(name: PurePosixPath, target: str) -> None:
    if target.startswith("/"):
        raise ArchiveError(f"archive link {str(name)!r} points to the absolute path {target!r}")
    depth = len(name.parent.parts)
    for part in PurePosixPath(target).parts:
        depth = depth - 1 if part == ".." else depth + (part != ".")
        if depth < 0:
            raise ArchiveError(f"archive link {str(name)!r} points outside the archive ({target!r})")


def unpack(archive: Path, target: Path, max_bytes: int, max_entries: int) -> None:
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, target, max_bytes, max_entries)
        return
    try:
        with tarfile.open(archive) as tar:
            _unpack_tar(tar, target, max_bytes, max_entries)
    except tarfile.TarError as exc:
        raise ArchiveError(f"not a readable tar or zip archive: {exc}") from None


def _unpack_tar(tar: tarfile.TarFile, target: Path, max_bytes: int, max_entries: int) -> None:
    total = 0
    members = []
    for count, member in enumerate(tar, start=1):
        if count > max_entries:
            raise ArchiveError(f"archive has more than {max_entries} entries")
        name = _safe_name(member.name)
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise ArchiveError(f"archive entry {member.name!r} is a device or FIFO")
        if member.issym() or member.islnk():
            _check_link(name if member.issym() else PurePosixPath("x"), member.linkname)
        total += member.size
        if total > max_bytes:
            raise ArchiveError(f"archive unpacks to more than {max_bytes} bytes")
        members.append(member)
    # the data filter again, as a second lock on the same door
    tar.extractall(target, members=members, filter="data")


def _unpack_zip(archive: Path, target: Path, max_bytes: int, max_entries: int) -> None:
    total = 0
    with zipfile.ZipFile(archive) as zipped:
        entries = zipped.infolist()
        if len(entries) > max_entries:
            raise ArchiveError(f"archive has more than {max_entries} entries")
        for entry in entries:
            _safe_name(entry.filename)
            mode = entry.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(
                    f"archive entry {entry.filename!r} is a symbolic link (not allowed in zip)"
                )
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArchiveError(f"archive entry {entry.filename!r} is not a file or folder")
        for entry in entries:
            destination = target / _safe_name(entry.filename)
            if entry.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(entry) as source, open(destination, "wb") as out:
                while block := source.read(READ_BLOCK):
                    total += len(block)  # what really comes out, whatever the header claims
                    if total > max_bytes:
                        raise ArchiveError(f"archive unpacks to more than {max_bytes} bytes")
                    out.write(block)
            mode = (entry.external_attr >> 16) & 0o777
            destination.chmod((mode or 0o644) & 0o755 | 0o600)


def source_root(folder: Path) -> Path:
    """The folder with the Procfile: the top, or the single folder an archive wraps everything in."""
    if (folder / "Procfile").exists():
        return folder
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    wrapper = entries[0] if len(entries) == 1 else None
    if (
        wrapper is not None
        and wrapper.is_dir()
        and not wrapper.is_symlink()
        and (wrapper / "Procfile").exists()
    ):
        return wrapper
    return folder


def clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def caller_may_read(url: str, uid: int) -> bool:
    """A file:// archive is read by berthd (often root) on the caller's behalf: only a file the caller
    could read itself (as owner, group member or other). Other schemes need no such check."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file" or uid == 0:
        return True
    try:
        info = os.stat(urllib.request.url2pathname(parts.path))
    except OSError:
        return True  # the download reports it missing
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IRUSR)
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, pwd.getpwuid(uid).pw_gid))
    except KeyError:
        groups = set()
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IRGRP)
    return bool(info.st_mode & stat.S_IROTH)
