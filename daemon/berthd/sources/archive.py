"""Source archives: the URL checked, the archive downloaded as a stream with a size limit, then unpacked
by `berthd.sources.extract` (formats: .tar.gz/.tgz/.tar, .tar.bz2/.tar.xz, .zip).

A `file://` archive is opened with the caller's rights (`berthd.sources.caller`) before the deploy starts,
and its descriptor is what the download reads.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from berthd.server.params import without_credentials
from berthd.sources.extract import ArchiveError as ArchiveError
from berthd.sources.extract import unpack as unpack

SCHEMES = ("http", "https", "file")
SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")
READ_BLOCK = 1024 * 1024
DOWNLOAD_TIMEOUT = 60.0


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
    if parts.scheme == "file":
        local_path(parts)
    return parts


def local_path(parts: urllib.parse.SplitResult) -> str:
    """The path of a `file://` URL on this host: decoded strictly, without NUL bytes."""
    if parts.netloc not in ("", "localhost"):
        raise ArchiveError(f"a file:// URL names a file on this host, not on {parts.netloc!r}")
    raw = urllib.parse.unquote_to_bytes(parts.path)
    if b"\x00" in raw:
        raise ArchiveError("the file:// URL's path contains a NUL byte")
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError("the file:// URL's path is not valid UTF-8") from None
    if not path.startswith("/"):
        raise ArchiveError("the file:// URL's path must be absolute")
    return path


def download(
    url: str, opened: int | None, target: Path, max_bytes: int, progress: Callable[[int, int | None], None]
) -> int:
    """Stream the archive into `target`; its size. Never more than `max_bytes` are written. A file://
    archive is read from `opened`, the descriptor opened as the caller (the caller's to close)."""
    try:
        if opened is not None:
            source = open(opened, "rb", closefd=False)  # noqa: SIM115 - closed below
            total: int | None = os.fstat(opened).st_size
        elif urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ArchiveError("a file:// archive is read only from the descriptor opened as the caller")
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
