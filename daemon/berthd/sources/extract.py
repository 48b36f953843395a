"""Unpacking a tar or zip archive beneath one folder without trusting a name, a link or the kernel's path
walk: every entry is written relative to the folder's descriptor.

- Each folder on an entry's path is opened with `O_NOFOLLOW | O_DIRECTORY` from the one above it, so
  nothing is ever reached through a symbolic link, whatever is on disk.
- Symbolic links are made last, after every file and folder, so none can be traversed while unpacking;
  an entry whose path runs through a link the archive makes is refused, and so is a link whose target
  leaves the tree, is absolute, or climbs through another of the archive's links.
- Files are created `O_CREAT | O_EXCL | O_NOFOLLOW` with their final mode (0644, or 0755 when any execute
  bit is set; never setuid, setgid or sticky); folders are 0755.
- Hard links go only to regular files this archive wrote before (`linkat` between folder descriptors,
  following nothing). Devices and FIFOs are refused, so is a name given twice.
- Bytes are counted while they are written (a zip bomb's headers are not believed), entries as they come.
- A name is at most 4096 bytes, 255 a part and 128 folders deep; an error quotes at most 200 characters.
- Tar costs what its headers claim before it is paid: the first pass sums the sizes of the members (and
  of their metadata headers) and refuses over the limit before tarfile skips, so decompresses, the data;
  a long-name or pax header over 64 KiB (which tarfile reads whole) is refused before it is read
  (`_BoundedTarInfo`); every decompressed byte is counted against a budget and a deadline (`Work`).

Tar and zip go through the same `Extractor`. It needs only the standard library (no `tarfile` filters,
which Debian 12's Python 3.11.2 lacks), and an `OSError` of one entry becomes that entry's `ArchiveError`.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

READ_BLOCK = 1024 * 1024
MAX_LINK_TARGET = 4096
MAX_NAME_BYTES = 4096  # PATH_MAX
MAX_PART_BYTES = 255  # NAME_MAX
MAX_DEPTH = 128  # folders in a name
SHOWN_NAME = 200  # characters of a name an error message quotes
UNPACK_SECONDS = 600.0  # a backstop: the byte limits stop a bomb long before
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FOLDER, FILE, LINK, IMPLIED = "folder", "file", "link", "implied folder"
ZIP_END_SIGNATURE = b"PK\x05\x06"
ZIP_END = struct.Struct("<4s4H2LH")  # signature, disks, entries, size and offset of the directory, comment
ZIP64_END = struct.Struct("<4sQ2H2L4Q")  # ..., entries, directory size, directory offset
ZIP64_LOCATOR_SIZE = 20
ZIP_HEADER_SIZE = 46  # a central directory header, before its name, extra field and comment

Parts = tuple[str, ...]


class ArchiveError(ValueError):
    """The archive cannot be deployed; the message names the entry and says why."""


def unpack(
    archive: Path, target: Path, max_bytes: int, max_entries: int, max_seconds: float = UNPACK_SECONDS
) -> None:
    """Every entry of the tar or zip `archive` into the (empty) folder `target`; given up after
    `max_seconds` (the thread this runs on cannot be cancelled)."""
    with Extractor(target, max_bytes, max_entries) as extractor:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, extractor)
        else:
            _unpack_tar(archive, extractor, Work(max_bytes, max_entries, max_seconds))


def _unpack_tar(archive: Path, extractor: Extractor, work: Work) -> None:
    try:
        with _open_tar(archive, work) as tar:  # headers only: a limit is met before anything is written
            claimed = 0
            for count, member in enumerate(tar, start=1):
                extractor.expect(count)
                # what tarfile skips (decompressing it) on its way to the next header: refused before
                claimed += member.size
                extractor.expect_bytes(claimed + tar.metadata_bytes)
                tar.members.clear()  # type: ignore[attr-defined]  # 100k entries need not stay in memory
        with _open_tar(archive, work) as tar:
            for member in tar:
                if member.isdir():
                    extractor.folder(member.name)
                elif member.isreg():
                    data = tar.extractfile(member)
                    assert data is not None  # a regular member always has data
                    extractor.file(member.name, bool(member.mode & 0o111), data)
                elif member.issym():
                    extractor.symlink(member.name, member.linkname)
                elif member.islnk():
                    extractor.hardlink(member.name, member.linkname)
                elif member.ischr() or member.isblk() or member.isfifo():
                    raise ArchiveError(f"archive entry {quoted(member.name)} is a device or FIFO")
                else:
                    raise ArchiveError(f"archive entry {quoted(member.name)} is of an unsupported type")
                tar.members.clear()  # type: ignore[attr-defined]  # 100k entries need not stay in memory
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(f"not a readable tar or zip archive: {str(exc)[:SHOWN_NAME]}") from None
    except OSError as exc:  # gzip's BadGzipFile and the like, reading the archive itself
        raise ArchiveError(f"not a readable tar or zip archive: {str(exc)[:SHOWN_NAME]}") from None


# tar: what tarfile reads whole, and how much it decompresses

MAX_METADATA = 64 * 1024  # a long name or link (GNU L/K) or a pax header, which tarfile reads whole
MAX_METADATA_IN_A_ROW = 8  # tarfile recurses into the member each of them describes
METADATA_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
HEADER_ALLOWANCE = 4096  # decompressed bytes a member may take beyond its data: headers and padding


class _BoundedTarInfo(tarfile.TarInfo):
    """A header that refuses, once its 512 bytes are parsed and before tarfile reads what follows, a
    metadata header over MAX_METADATA (tarfile would read it whole into memory) or too many of them in a
    row (tarfile recurses through them). Checked in `_proc_member`, the one place every header passes
    through on every Python berthd runs on, rather than by parsing each header a second time ourselves."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        assert isinstance(archive, _BoundedTarFile)
        if self.type not in METADATA_TYPES:
            archive.metadata_in_a_row = 0
        elif self.size > MAX_METADATA:
            raise ArchiveError(
                f"archive has a metadata header (type {self.type!r}) of {self.size} bytes,"
                f" over the limit of {MAX_METADATA}"
            )
        else:
            archive.metadata_in_a_row += 1
            if archive.metadata_in_a_row > MAX_METADATA_IN_A_ROW:
                raise ArchiveError(f"archive has more than {MAX_METADATA_IN_A_ROW} metadata headers in a row")
            archive.metadata_bytes += self.size
        return super()._proc_member(archive)  # type: ignore[misc, no-any-return]


class _BoundedTarFile(tarfile.TarFile):
    tarinfo = _BoundedTarInfo
    metadata_in_a_row = 0
    metadata_bytes = 0  # of every metadata header read so far, counted with the data


class Work:
    """How much decompression one unpack may do in all (both passes over the archive) and until when:
    checked before each step of at most READ_BLOCK bytes, so a bomb is stopped before it is expanded."""

    def __init__(self, max_bytes: int, max_entries: int, max_seconds: float) -> None:
        self.limit = 2 * (max_bytes + HEADER_ALLOWANCE * max_entries)
        self.spent = 0
        self.seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds

    def spend(self, size: int) -> None:
        self.spent += size
        if self.spent > self.limit:
            raise ArchiveError(f"archive decompresses to more than {self.limit} bytes")
        if time.monotonic() > self.deadline:
            raise ArchiveError(f"archive took longer than {self.seconds:g} s to unpack")


class _Metered:
    """The decompressed stream that tarfile reads, each read and (forward) seek paid for in `Work`
    first: a seek over member data is a read that decompresses it."""

    def __init__(self, stream: IO[bytes], work: Work) -> None:
        self.stream = stream
        self.work = work
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(iter(lambda: self.read(READ_BLOCK), b""))
        self.work.spend(size)
        data = self.stream.read(size)
        self.position += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise OSError(errno.ESPIPE, "only absolute seeks in a decompressed stream")
        if offset < self.position:  # back: the stream starts again from the beginning
            self.stream.seek(0)
            self.position = 0
        while self.position < offset and self.read(min(READ_BLOCK, offset - self.position)):
            pass
        return self.position

    def tell(self) -> int:
        return self.position


@contextmanager
def _open_tar(archive: Path, work: Work) -> Iterator[_BoundedTarFile]:
    """The tar in `archive` (compressed with gzip, bzip2 or xz, or not), read through `_Metered`."""
    with open(archive, "rb") as raw:
        stream = _decompressed(raw)
        if stream is None:  # a plain tar: seeking in it costs nothing, and its size was limited
            with _BoundedTarFile.open(fileobj=raw, mode="r:") as tar:
                yield tar
            return
        with stream, _BoundedTarFile.open(fileobj=cast(IO[bytes], _Metered(stream, work)), mode="r:") as tar:
            yield tar


def _decompressed(raw: IO[bytes]) -> IO[bytes] | None:
    """What `raw` decompresses to, by its first bytes; None when it is not compressed."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return None


def _unpack_zip(archive: Path, extractor: Extractor) -> None:
    _count_zip_entries(archive, extractor)  # before zipfile builds an object for each of them
    try:
        with zipfile.ZipFile(archive) as zipped:
            entries = zipped.infolist()
            extractor.expect(len(entries))
            for entry in entries:
                mode = entry.external_attr >> 16 if entry.create_system == 3 else 0
                if entry.is_dir():
                    extractor.folder(entry.filename)
                elif stat.S_ISLNK(mode):
                    with zipped.open(entry) as source:
                        target = source.read(MAX_LINK_TARGET + 1)
                    if len(target) > MAX_LINK_TARGET:
                        raise ArchiveError(f"archive link {quoted(entry.filename)} has an over-long target")
                    extractor.symlink(entry.filename, target.decode("utf-8", "surrogateescape"))
                elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    raise ArchiveError(f"archive entry {quoted(entry.filename)} is a device or FIFO")
                else:
                    with zipped.open(entry) as source:
                        extractor.file(entry.filename, bool(mode & 0o111), source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError) as exc:
        raise ArchiveError(f"not a readable zip archive: {exc}") from None
    except (NotImplementedError, RuntimeError) as exc:  # an unknown compression, an encrypted entry
        raise ArchiveError(f"cannot unpack this zip archive: {exc}") from None


def _count_zip_entries(archive: Path, extractor: Extractor) -> None:
    """Walk the central directory's headers where zipfile will read them, counting, building nothing.
    Whatever does not look as expected is left for zipfile to refuse."""
    with open(archive, "rb") as source:
        size = source.seek(0, os.SEEK_END)
        tail_at = max(0, size - ZIP_END.size - 0xFFFF)  # the end record, then at most a 64 KiB comment
        source.seek(tail_at)
        tail = source.read()
        found = tail.rfind(ZIP_END_SIGNATURE)
        if found < 0 or len(tail) - found < ZIP_END.size:
            return
        directory_size = ZIP_END.unpack_from(tail, found)[-3]
        end = tail_at + found
        if found >= ZIP64_LOCATOR_SIZE and tail[found - ZIP64_LOCATOR_SIZE :][:4] == b"PK\x06\x07":
            # zip64 (as zipfile, whenever its locator is there): the sizes are in a record of their own
            if end < ZIP64_LOCATOR_SIZE + ZIP64_END.size:
                return
            source.seek(end - ZIP64_LOCATOR_SIZE - ZIP64_END.size)
            record = source.read(ZIP64_END.size)
            if len(record) < ZIP64_END.size or record[:4] != b"PK\x06\x06":
                return
            directory_size = ZIP64_END.unpack(record)[-2]
            end -= ZIP64_LOCATOR_SIZE + ZIP64_END.size
        if directory_size > end:
            return
        source.seek(end - directory_size)  # as zipfile does: data prepended to the zip is allowed
        walked = count = 0
        while walked < directory_size:
            header = source.read(ZIP_HEADER_SIZE)
            if len(header) < ZIP_HEADER_SIZE or header[:4] != b"PK\x01\x02":
                return
            variable = sum(int.from_bytes(header[at : at + 2], "little") for at in (28, 30, 32))
            source.seek(variable, os.SEEK_CUR)
            walked += ZIP_HEADER_SIZE + variable
            count += 1
            extractor.expect(count)


def entry_parts(name: str, what: str = "archive entry", within: str = "the archive's folder") -> Parts:
    """An entry's name as folder names below the top; `.` and empty parts dropped. `what` and `within`
    name the entry and its top in the messages (an upload's file path, the app's folder)."""
    if "\x00" in name:
        raise ArchiveError(f"{what} name contains a NUL byte")
    if name.startswith("/"):
        raise ArchiveError(f"{what} {quoted(name)} has an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if len(parts) > MAX_DEPTH:
        raise ArchiveError(f"{what} {quoted(name)} is {len(parts)} folders deep, over {MAX_DEPTH}")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_PART_BYTES for part in parts):
        raise ArchiveError(f"{what} {quoted(name)} has a part longer than {MAX_PART_BYTES} bytes")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ArchiveError(f"{what} {quoted(name)} is longer than {MAX_NAME_BYTES} bytes")
    if ".." in parts:
        raise ArchiveError(f"{what} {quoted(name)} leaves {within}")
    return parts


def quoted(name: str) -> str:
    """A name as an error message shows it: quoted, and cut to about SHOWN_NAME characters."""
    shown = repr(name)
    if len(shown) <= SHOWN_NAME:
        return shown
    return f"{shown[:SHOWN_NAME]}... ({len(name)} characters)"


def _shown(parts: Parts) -> str:
    return quoted("/".join(parts) or ".")


class Extractor:
    """Writes entries beneath `target`, which must be an empty folder of berthd's own."""

    def __init__(self, target: Path, max_bytes: int, max_entries: int) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.written = 0
        self.entries = 0
        self.kinds: dict[Parts, str] = {(): FOLDER}
        self.links: list[tuple[Parts, str]] = []
        self.top = -1

    def __enter__(self) -> Extractor:
        self.top = os.open(self.target, DIRECTORY_FLAGS)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._make_links()
        finally:
            os.close(self.top)

    def expect(self, count: int) -> None:
        """A format that lists its entries up front (zip) is refused before anything is written."""
        if count > self.max_entries:
            raise ArchiveError(f"archive has more than {self.max_entries} entries")

    def expect_bytes(self, claimed: int) -> None:
        """An archive whose headers claim more than the limit is refused before anything is written."""
        if claimed > self.max_bytes:
            raise ArchiveError(f"archive unpacks to more than {self.max_bytes} bytes")

    # the entry kinds

    def folder(self, name: str) -> None:
        parts = self._claim(name, FOLDER)
        if not parts:
            return
        with self._entry(parts), self._parent(parts) as parent:
            if self.kinds.get(parts) == IMPLIED:
                self.kinds[parts] = FOLDER
                return
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
            self.kinds[parts] = FOLDER
            self._fix_folder_mode(parent, parts[-1])

    def file(self, name: str, executable: bool, data: IO[bytes]) -> None:
        parts = self._claim(name, FILE)
        mode = 0o755 if executable else 0o644
        with self._entry(parts), self._parent(parts) as parent:
            fd = os.open(parts[-1], FILE_FLAGS, mode, dir_fd=parent)
            self.kinds[parts] = FILE
            with open(fd, "wb", closefd=True) as out:
                os.fchmod(fd, mode)  # the umask may have taken bits away; never more than `mode`
                while block := data.read(READ_BLOCK):
                    self.written += len(block)  # what really comes out, whatever the header claimed
                    if self.written > self.max_bytes:
                        raise ArchiveError(f"archive unpacks to more than {self.max_bytes} bytes")
                    out.write(block)

    def link_in(self, name: str, executable: bool, source: Path) -> None:
        """`source`, a file of berthd's own outside the tree, hard-linked in as `name` with the mode
        `file` gives (0755 or 0644): placed as `file` places an entry, its bytes not copied."""
        parts = self._claim(name, FILE)
        mode = 0o755 if executable else 0o644
        with self._entry(parts), self._parent(parts) as parent:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, mode)
                self.written += os.fstat(fd).st_size
            finally:
                os.close(fd)
            if self.written > self.max_bytes:
                raise ArchiveError(f"the files take more than {self.max_bytes} bytes")
            os.link(source, parts[-1], dst_dir_fd=parent, follow_symlinks=False)
            self.kinds[parts] = FILE

    def hardlink(self, name: str, target: str) -> None:
        parts = self._claim(name, FILE)
        source = entry_parts(target)
        if self.kinds.get(source) != FILE:
            raise ArchiveError(
                f"archive hard link {quoted(name)} points to {quoted(target)}, which is not a file this archive wrote"
                " before it"
            )
        with self._entry(parts), self._parent(source) as source_parent, self._parent(parts) as parent:
            os.link(source[-1], parts[-1], src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False)
            self.kinds[parts] = FILE

    def symlink(self, name: str, target: str) -> None:
        """Made when every other entry is written, and checked then, when every other link is known."""
        parts = self._claim(name, LINK)
        with self._entry(parts), self._parent(parts):
            self.kinds[parts] = LINK  # its folders exist now: a later file cannot take their names
        self.links.append((parts, target))

    # the checks

    def _claim(self, name: str, kind: str) -> Parts:
        self.entries += 1
        if self.entries > self.max_entries:
            raise ArchiveError(f"archive has more than {self.max_entries} entries")
        parts = entry_parts(name)
        if not parts:
            if kind == FOLDER:
                return parts  # the top itself (`./`): it exists
            raise ArchiveError(f"archive entry {quoted(name)} has no name")
        existing = self.kinds.get(parts)
        if existing is not None and not (kind == FOLDER and existing == IMPLIED):
            raise ArchiveError(f"archive entry {_shown(parts)} appears twice")
        for depth in range(1, len(parts)):
            above = self.kinds.get(parts[:depth])
            if above == LINK:
                raise ArchiveError(
                    f"archive entry {_shown(parts)} runs through the link {_shown(parts[:depth])}"
                    " the archive makes"
                )
            if above == FILE:
                raise ArchiveError(
                    f"archive entry {_shown(parts)} is inside {_shown(parts[:depth])}, which is a file"
                )
        return parts

    def _check_link(self, parts: Parts, target: str) -> None:
        shown = _shown(parts)
        if not target or "\x00" in target:
            raise ArchiveError(f"archive link {shown} has an empty or invalid target")
        if target.startswith("/"):
            raise ArchiveError(f"archive link {shown} points to the absolute path {quoted(target)}")
        where = list(parts[:-1])
        pieces = [piece for piece in target.split("/") if piece not in ("", ".")]
        for index, piece in enumerate(pieces):
            if piece == "..":
                if not where:
                    raise ArchiveError(f"archive link {shown} points outside the archive ({quoted(target)})")
                where.pop()
                continue
            where.append(piece)
            # only the last step may be another link (itself checked); one on the way could lead anywhere
            if index < len(pieces) - 1 and self.kinds.get(tuple(where)) == LINK:
                raise ArchiveError(
                    f"archive link {shown} points through the link {_shown(tuple(where))} ({quoted(target)})"
                )

    # the descriptors

    @contextmanager
    def _entry(self, parts: Parts) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                raise ArchiveError(f"archive entry {_shown(parts)} clashes with another entry") from None
            raise ArchiveError(f"cannot unpack {_shown(parts)}: {exc.strerror}") from None

    @contextmanager
    def _parent(self, parts: Parts) -> Iterator[int]:
        """The folder holding `parts`, opened one name at a time from the top; missing folders made."""
        fd = os.dup(self.top)
        try:
            for depth in range(1, len(parts)):
                name, here = parts[depth - 1], parts[:depth]
                if here not in self.kinds:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    self.kinds[here] = IMPLIED
                    self._fix_folder_mode(fd, name)
                below = os.open(name, DIRECTORY_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = below
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _fix_folder_mode(parent: int, name: str) -> None:
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=parent)
        try:
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)

    def _make_links(self) -> None:
        for parts, target in self.links:
            self._check_link(parts, target)
        for parts, target in self.links:
            with self._entry(parts), self._parent(parts) as parent:
                os.symlink(target, parts[-1], dir_fd=parent)
