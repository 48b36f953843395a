"""Source archives: the URL checked, the archive downloaded as a stream with a size limit and a deadline,
then unpacked by `berthd.sources.extract` (formats: .tar.gz/.tgz/.tar, .tar.bz2/.tar.xz, .zip).

A `file://` archive is opened with the caller's rights (`berthd.sources.caller`) before the deploy starts,
and its descriptor is what the download reads. A download runs on a worker thread that trio may abandon
when the deploy is cancelled: the thread checks a stop flag and the deadline between reads (reads of at
most READ_BLOCK, returning whatever has arrived), and creates the download's file itself only while the
deploy has not given up, so the deploy's clean-up never misses it.
"""

from __future__ import annotations

import base64
import http.client
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from berthd.server.redaction import without_credentials
from berthd.sources.extract import ArchiveError as ArchiveError
from berthd.sources.extract import unpack as unpack
from berthd.store.trees import remove_or_log

SCHEMES = ("http", "https", "file")
SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")
READ_BLOCK = 1024 * 1024
STALL_TIMEOUT = 30.0  # a server that sends nothing for this long has failed
INCOMING_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file" and parts.netloc and "@" in url.partition(parts.netloc)[2]:
        raise ArchiveError(
            "invalid archive URL: an '@' after the host; a user or password holding '/', '?', '#', '@' "
            "or a blank must be percent-encoded"
        )
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


class Stop:
    """Set by the deploy when it gives up on a download. The download's thread, which may outlive an
    abandoned deploy, creates nothing once it is set, and checks it between reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False

    def set(self) -> None:
        with self._lock:
            self._set = True

    def is_set(self) -> bool:
        return self._set

    @contextmanager
    def unless_set(self) -> Iterator[None]:
        with self._lock:
            if self._set:
                raise ArchiveError("download cancelled")
            yield


def download(
    url: str,
    opened: int | None,
    incoming: Path,
    max_bytes: int,
    timeout: float,
    stop: Stop,
    progress: Callable[[int, int | None], None],
) -> int:
    """Stream the archive (from the descriptor `opened` of a file:// URL, else over HTTP) into a new
    file `incoming`, 0600 from the first instant; its size. Never more than `max_bytes` are written;
    after `timeout` seconds in all, or once `stop` is set, it gives up."""
    deadline = Deadline(timeout)
    with stop.unless_set():  # so that the deploy's clean-up, once it set `stop`, finds all there is
        out = os.open(incoming, INCOMING_FLAGS, 0o600)
        copy = os.dup(opened) if opened is not None else None
    with open(out, "wb", closefd=True) as target:
        if copy is not None:
            with open(copy, "rb", closefd=True) as source:
                total = os.fstat(source.fileno()).st_size
                return _copy(source.read1, target, total, max_bytes, deadline, stop, progress)
        response = _open_http(url, deadline)
        with response:
            length = response.headers.get("Content-Length")
            total_or_none = int(length) if length and length.isdigit() else None
            return _copy(response.read1, target, total_or_none, max_bytes, deadline, stop, progress)


class Deadline:
    """The overall limit of one download."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def error(self) -> ArchiveError:
        return ArchiveError(f"download took longer than {self.seconds:g} s (--download-timeout)")


def _request(url: str) -> urllib.request.Request:
    """The request for `url`: a user and password in it go as Basic auth, never in the host name (which
    would reach the resolver), and as an unredirected header, so a redirect elsewhere does not get them."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return urllib.request.Request(url, headers={"User-Agent": "berthd"})
    netloc = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
    request.add_header("User-Agent", "berthd")
    pair = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    return request


def _open_http(url: str, deadline: Deadline) -> http.client.HTTPResponse:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ArchiveError("a file:// archive is read only from the descriptor opened as the caller")
    request = _request(url)
    timeout = max(0.1, min(STALL_TIMEOUT, deadline.left()))
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # type: ignore[no-any-return]  # noqa: S310 - scheme checked
    except urllib.error.HTTPError as exc:
        raise ArchiveError(f"download failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise ArchiveError(f"download failed: {reason}") from None


def _copy(
    read: Callable[[int], bytes],
    target: IO[bytes],
    total: int | None,
    max_bytes: int,
    deadline: Deadline,
    stop: Stop,
    progress: Callable[[int, int | None], None],
) -> int:
    if total is not None and total > max_bytes:
        raise ArchiveError(f"archive is {total} bytes, over the limit of {max_bytes}")
    written = 0
    try:
        while block := read(READ_BLOCK):
            if stop.is_set():
                raise ArchiveError("download cancelled")
            if deadline.left() < 0:
                raise deadline.error()
            written += len(block)
            if written > max_bytes:
                raise ArchiveError(f"archive is over the limit of {max_bytes} bytes")
            target.write(block)
            progress(written, total)
    except TimeoutError:
        raise ArchiveError(f"download failed: nothing received for {STALL_TIMEOUT:g} s") from None
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
    remove_or_log(folder)
