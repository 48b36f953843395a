"""Hostile archives, as an attacker would build them, against a real berthd (root) serving them over HTTP.

Every attack must end in a clear `invalid_argument` (`unpack failure`), write nothing outside the release
folder (the paths the attack aims at are checked), leave no release behind, and leave berthd answering.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import os
import signal
import socket
import stat
import subprocess
import tarfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from berthd.sources import archive, extract, releases
from berthd.store import modes, trees
from tests import test_sources
from tests.daemon_proc import Berthd
from tests.test_native_runner import wait_for
from tests.test_sources import PROCFILE

http_root = test_sources.http_root  # the HTTP server on loopback, as a fixture of this module too

Member = tuple[str, bytes, str]  # name, file data (or a tar type below), link target
LINK_AND_SPECIAL_TYPES = (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                          tarfile.FIFOTYPE)  # fmt: skip


def tar_of(path: Path, members: list[Member]) -> None:
    """A tar with exactly these members, in this order: (name, data or tar type, link target)."""
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, what, link in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if what not in LINK_AND_SPECIAL_TYPES:
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
                continue
            info.type = what
            info.linkname = link
            info.mode = 0o755 if what == tarfile.DIRTYPE else 0o644
            tar.addfile(info)


def deploy(daemon: Berthd, base: str, name: str, app: str = "hostile") -> dict[str, object]:
    answer = daemon.call(["git:from-archive", app, f"{base}/{name}"])
    return {"ok": answer.ok, "error": answer.error, "output": answer.output}


def assert_refused_cleanly(
    daemon: Berthd, answer: dict[str, object], message: str, app: str = "hostile"
) -> None:
    assert (answer["ok"], answer["error"]) == (False, "invalid_argument"), answer
    assert message in str(answer["output"]), answer
    assert_no_app_left(daemon, app)
    assert daemon.call("ping").output == "pong"


def assert_no_app_left(daemon: Berthd, app: str) -> None:
    """A first deploy that failed: nothing of the app, neither its row nor its files."""
    assert daemon.call("apps:info " + app).error == "not_found"
    assert not (daemon.data_dir / "apps" / app).exists()


def aims(daemon: Berthd) -> list[Path]:
    """Where the attacks below try to write: the test's folder, berthd's folders, /tmp."""
    base = daemon.workdir.parent
    return [base / "pwned", daemon.workdir / "pwned", daemon.data_dir / "pwned", daemon.data_dir / "apps" / "pwned",
            Path("/tmp/berth-pwned")]  # fmt: skip


def assert_nothing_outside(daemon: Berthd) -> None:
    for path in aims(daemon):
        assert not path.exists(), f"the archive wrote {path}"
    found = subprocess.run(
        ["find", str(daemon.workdir.parent), "-name", "pwned*"], capture_output=True, text=True
    )
    assert found.stdout == ""


def test_a_chain_of_links_made_by_the_archive_is_refused(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    # s -> . makes s/s/s the top; e -> ../../.. judged alone stays inside, but from the top it climbs three
    tar_of(root / "chain.tar.gz", [
        ("Procfile", PROCFILE, ""),
        ("s", tarfile.SYMTYPE, "."),
        ("s/s/s/e", tarfile.SYMTYPE, "../../.."),
        ("e/pwned", b"owned\n", ""),
    ])  # fmt: skip
    assert_refused_cleanly(berthd, deploy(berthd, base, "chain.tar.gz"), "through the link 's'")
    assert_nothing_outside(berthd)


def test_the_long_path_variant_of_cve_2025_4517_is_refused(
    berthd: Berthd, http_root: tuple[Path, str]
) -> None:
    root, base = http_root
    folder, steps, members = "d" * 247, "abcdefghijklmnop", [("Procfile", PROCFILE, "")]
    path = ""
    for step in steps:
        members += [
            (os.path.join(path, folder), tarfile.DIRTYPE, ""),
            (os.path.join(path, step), tarfile.SYMTYPE, folder),
        ]
        path = os.path.join(path, folder)
    long_link = os.path.join(*steps, "l" * 254)
    members += [
        (long_link, tarfile.SYMTYPE, "../" * len(steps)),  # the top, seen from 16 folders down
        ("escape", tarfile.SYMTYPE, long_link + "/.." * 6),  # six above the top: the test's folder
        ("escape/pwned", b"owned\n", ""),
    ]
    tar_of(root / "long.tar.gz", members)
    assert_refused_cleanly(berthd, deploy(berthd, base, "long.tar.gz"), "through the link")
    assert_nothing_outside(berthd)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("passwd", tarfile.LNKTYPE, "../../../../../../pwned")], "leaves the archive's folder"),
        ([("passwd", tarfile.LNKTYPE, "/etc/passwd")], "absolute path"),
        ([("s", tarfile.SYMTYPE, "Procfile"), ("h", tarfile.LNKTYPE, "s")], "not a file this archive wrote"),
        ([("h", tarfile.LNKTYPE, "later"), ("later", b"x", "")], "not a file this archive wrote"),
        ([("d", tarfile.DIRTYPE, ""), ("h", tarfile.LNKTYPE, "d")], "not a file this archive wrote"),
    ],
    ids=["outside", "absolute", "to-a-link", "to-a-later-entry", "to-a-folder"],
)
def test_hard_links_go_only_to_files_the_archive_wrote_before(
    berthd: Berthd, http_root: tuple[Path, str], members: list[Member], message: str
) -> None:
    root, base = http_root
    tar_of(root / "hard.tar.gz", [("Procfile", PROCFILE, ""), *members])
    assert_refused_cleanly(berthd, deploy(berthd, base, "hard.tar.gz"), message)
    assert_nothing_outside(berthd)
    assert os.stat("/etc/passwd").st_nlink == 1


def test_a_hard_link_to_an_earlier_file_is_unpacked(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    tar_of(root / "ok.tar.gz", [("Procfile", PROCFILE, ""), ("again", tarfile.LNKTYPE, "Procfile"),
                                ("docs/readme", tarfile.SYMTYPE, "../Procfile")])  # fmt: skip
    answer = berthd.call(["git:from-archive", "linked", f"{base}/ok.tar.gz"])
    assert answer.ok, answer.output
    current = berthd.data_dir / "apps" / "linked" / "current"
    assert (current / "again").read_bytes() == PROCFILE
    assert os.readlink(current / "docs" / "readme") == "../Procfile"
    berthd.call("ps:stop linked")


@pytest.mark.parametrize(
    "kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE], ids=["char-device", "block-device", "fifo"]
)
def test_devices_and_fifos_are_refused(berthd: Berthd, http_root: tuple[Path, str], kind: bytes) -> None:
    root, base = http_root
    tar_of(root / "dev.tar.gz", [("Procfile", PROCFILE, ""), ("mem", kind, "")])
    assert_refused_cleanly(berthd, deploy(berthd, base, "dev.tar.gz"), "is a device or FIFO")


@pytest.mark.parametrize(
    "members",
    [
        [("app", b"first", ""), ("app", b"second", "")],
        [("app", tarfile.SYMTYPE, "Procfile"), ("app", b"a file over the link", "")],
        [("./app", b"first", ""), ("app", tarfile.DIRTYPE, "")],
    ],
    ids=["file-twice", "link-then-file", "file-then-folder"],
)
def test_duplicate_names_are_refused(
    berthd: Berthd, http_root: tuple[Path, str], members: list[Member]
) -> None:
    root, base = http_root
    tar_of(root / "dup.tar.gz", [("Procfile", PROCFILE, ""), *members])
    assert_refused_cleanly(berthd, deploy(berthd, base, "dup.tar.gz"), "appears twice")


def test_setuid_and_odd_modes_are_not_kept(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    with tarfile.open(root / "modes.tar.gz", "w:gz") as tar:
        for name, mode in (("Procfile", 0o6777), ("tool", 0o4755), ("secret", 0o000), ("bin", 0o1777)):
            info = tarfile.TarInfo(name)
            info.mode = mode
            if name == "bin":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            data = PROCFILE if name == "Procfile" else b"x"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    answer = berthd.call(["git:from-archive", "modes", f"{base}/modes.tar.gz"])
    assert answer.ok, answer.output
    current = berthd.data_dir / "apps" / "modes" / "current"
    modes = {name: (current / name).stat().st_mode & 0o7777 for name in ("Procfile", "tool", "secret", "bin")}
    # no set-id or sticky bit survives; executables stay executable; once live, the code is the app
    # group's only (berthd's file-mode rule), so others have nothing
    assert modes == {"Procfile": 0o750, "tool": 0o750, "secret": 0o640, "bin": 0o750}
    berthd.call("ps:stop modes")


def zip_link(name: str) -> zipfile.ZipInfo:
    link = zipfile.ZipInfo(name)
    link.external_attr = 0o120777 << 16  # a symbolic link, as Info-ZIP stores one
    link.create_system = 3
    return link


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("a", b"a file"), ("a/b", b"a file under a file")], "'a', which is a file"),
        ([("Procfile", b"web: echo the other one\n")], "appears twice"),
        ([(zip_link("up"), b"../../../../../..")], "points outside"),
    ],
    ids=["file-then-file-under-it", "duplicate", "link-outside"],
)
def test_hostile_zips_are_unpack_failures(
    berthd: Berthd,
    http_root: tuple[Path, str],
    entries: list[tuple[str | zipfile.ZipInfo, bytes]],
    message: str,
) -> None:
    root, base = http_root
    with zipfile.ZipFile(root / "hostile.zip", "w") as zipped, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: that is the attack
        zipped.writestr("Procfile", PROCFILE)
        for name, data in entries:
            zipped.writestr(name, data)
    assert_refused_cleanly(berthd, deploy(berthd, base, "hostile.zip"), message)
    assert_nothing_outside(berthd)


def test_a_tar_bomb_is_stopped_by_the_bytes_written(
    start_berthd: Callable[..., Berthd], http_root: tuple[Path, str]
) -> None:
    daemon = start_berthd(extra_args=["--max-unpacked-bytes", "1000000"])
    root, base = http_root
    with tarfile.open(root / "bomb.tar.gz", "w:gz") as tar:
        for name, data in (("Procfile", PROCFILE), ("zeros", b"\0" * 30_000_000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert (root / "bomb.tar.gz").stat().st_size < 100_000
    assert_refused_cleanly(daemon, deploy(daemon, base, "bomb.tar.gz"), "more than 1000000 bytes")


def test_more_than_100k_entries_are_refused(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    with zipfile.ZipFile(root / "many.zip", "w") as zipped:
        zipped.writestr("Procfile", PROCFILE)
        for index in range(100_001):
            zipped.writestr(f"f/{index}", b"")
    assert_refused_cleanly(berthd, deploy(berthd, base, "many.zip"), "more than 100000 entries")
    with tarfile.open(root / "many.tar.gz", "w:gz") as tar:
        tar.addfile(_file_info("Procfile", len(PROCFILE)), io.BytesIO(PROCFILE))
        for index in range(100_001):
            tar.addfile(_file_info(f"f/{index}", 0), io.BytesIO(b""))
    assert_refused_cleanly(berthd, deploy(berthd, base, "many.tar.gz"), "more than 100000 entries")


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system Python")
def test_the_engine_runs_on_a_python_without_tarfile_filters(tmp_path: Path) -> None:
    """Debian 12's Python (3.11.2) has no `filter=`: unpacking must not need it."""
    found = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:3])"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    tar_of(tmp_path / "app.tar.gz", [("Procfile", PROCFILE, ""), ("bin", tarfile.DIRTYPE, ""),
                                     ("bin/tool", b"#!/bin/sh\n", ""), ("link", tarfile.SYMTYPE, "bin/tool")])  # fmt: skip
    (tmp_path / "out").mkdir()
    module = Path(archive.__file__).parent
    script = (
        "import sys, types; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from extract import unpack; unpack(Path(sys.argv[2]), Path(sys.argv[3]), 10**6, 100)"
    )
    run = subprocess.run(["/usr/bin/python3", "-I", "-c", script, str(module), str(tmp_path / "app.tar.gz"),
                          str(tmp_path / "out")], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, (found.stdout, run.stderr)
    assert (tmp_path / "out" / "Procfile").read_bytes() == PROCFILE
    assert os.readlink(tmp_path / "out" / "link") == "bin/tool"


# downloads


class DrippingServer:
    """An HTTP server on loopback that promises 10 MB and sends one byte every 0.2 s."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dripping = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.drip, args=(conn,), daemon=True).start()

    def drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\nContent-Type: application/gzip\r\n\r\n"
                )
                self.dripping.set()
                while not self.stop.wait(0.2):
                    conn.sendall(b"\0")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.listener.close()


@pytest.fixture
def dripping() -> Iterator[DrippingServer]:
    server = DrippingServer()
    yield server
    server.close()


def assert_rolled_back(daemon: Berthd, app: str) -> None:
    """A deploy cut short: its release, download and link gone; the app is kept, with why."""
    app_dir = daemon.data_dir / "apps" / app
    assert list((app_dir / "releases").iterdir()) == []
    assert not list(app_dir.glob(".incoming-*"))
    assert not (app_dir / "current").exists()


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_sigterm_during_a_dripping_download_exits_within_the_grace(
    start_berthd: Callable[..., Berthd], dripping: DrippingServer, signals: int
) -> None:
    grace = 3.0
    daemon = start_berthd(extra_args=["--shutdown-grace", str(grace)])
    url = f"http://127.0.0.1:{dripping.port}/slow.tar.gz"
    client = threading.Thread(
        target=lambda: _call_quietly(daemon, ["git:from-archive", "drip", url]), daemon=True
    )
    client.start()
    assert dripping.dripping.wait(10)
    time.sleep(1.0)
    incoming = list((daemon.data_dir / "apps" / "drip").glob(".incoming-*"))
    modes = [stat.S_IMODE(path.stat().st_mode) for path in incoming]
    assert daemon.proc is not None
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    if signals == 2:  # once berthd acted on the first (trio coalesces a signal not yet taken)
        wait_for(lambda: "finishing the commands in progress" in daemon.log(), timeout=5)
        daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(60)
    took = time.monotonic() - started
    print(f"berthd exited {took:.2f} s after {signals} SIGTERM(s), with --shutdown-grace {grace}")
    assert code == 0
    assert took < grace + 1.5, f"berthd took {took:.1f} s to exit with --shutdown-grace {grace}"
    if signals == 2:
        assert took < grace - 1, f"a second SIGTERM should stop berthd at once, it took {took:.1f} s"
    daemon.proc = None
    assert modes == [0o600], "the partial download is the caller's data: 0600 from the first instant"
    assert_rolled_back(daemon, "drip")
    daemon.start()
    assert daemon.call("ping").output == "pong"
    detail = daemon.call("apps:info drip").data["source_detail"]
    # recorded by the stopping berthd itself, not left as "downloading" for the next start to sweep
    assert (detail["status"], detail["error"]) == (
        "failed",
        "cancelled: berthd stopped before the deploy ended",
    )


def test_a_download_has_an_overall_deadline(
    start_berthd: Callable[..., Berthd], dripping: DrippingServer
) -> None:
    daemon = start_berthd(extra_args=["--download-timeout", "2"])
    started = time.monotonic()
    answer = daemon.call(["git:from-archive", "late", f"http://127.0.0.1:{dripping.port}/slow.tar.gz"])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert "longer than 2" in answer.output, answer.output
    assert time.monotonic() - started < 6
    assert_no_app_left(daemon, "late")
    assert daemon.call("ping").output == "pong"


def _call_quietly(daemon: Berthd, command: list[str]) -> None:
    with contextlib.suppress(OSError, ConnectionError, ValueError):
        daemon.call(command)


# denial of service: depth, metadata headers, decompression


@pytest.fixture
def deep_tmp_path(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path` for a test that makes trees deeper than pytest's own clean-up (`shutil.rmtree`, which
    recurses) can remove: removed at the end, by the walk berthd uses."""
    yield tmp_path
    trees.remove_tree(tmp_path)


def deep_tree(top: Path, depth: int) -> None:
    """`top/a/a/.../a/f`, `depth` folders deep, made through descriptors (the path is past PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("a", 0o755, dir_fd=fd)
            below = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_an_archive_3000_folders_deep_is_refused_and_berthd_restarts(
    deep_tmp_path: Path, berthd: Berthd, http_root: tuple[Path, str]
) -> None:
    root, base = http_root
    tar_of(root / "deep.tar.gz", [("Procfile", PROCFILE, ""), ("a/" * 3000 + "f", b"x", "")])
    assert (root / "deep.tar.gz").stat().st_size < 1000
    answer = berthd.call(["git:from-archive", "hostile", f"{base}/deep.tar.gz", "--user", "root"])
    result = {"ok": answer.ok, "error": answer.error, "output": answer.output}
    assert_refused_cleanly(berthd, result, "folders deep")
    assert len(answer.output) < 400, answer.output
    assert berthd.stop() == 0
    berthd.start()
    assert berthd.call("ping").output == "pong"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("d/" + "n" * 256, "longer than 255 bytes"),
        ("/".join(["d" * 200] * 21) + "/f", "longer than 4096 bytes"),
    ],
    ids=["component", "whole-name"],
)
def test_over_long_entry_names_are_refused(
    berthd: Berthd, http_root: tuple[Path, str], name: str, message: str
) -> None:
    root, base = http_root
    tar_of(root / "long.tar.gz", [("Procfile", PROCFILE, ""), (name, b"x", "")])
    answer = deploy(berthd, base, "long.tar.gz")
    assert_refused_cleanly(berthd, answer, message)
    assert len(str(answer["output"])) < 400, answer


def test_an_archive_at_the_depth_limit_is_deployed(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    tar_of(root / "ok.tar.gz", [("Procfile", PROCFILE, ""), ("a/" * 127 + "f", b"x", "")])
    answer = berthd.call(["git:from-archive", "deepok", f"{base}/ok.tar.gz"])
    assert answer.ok, answer.output
    assert (berthd.data_dir / "apps" / "deepok" / "current" / ("a/" * 127 + "f")).read_bytes() == b"x"
    berthd.call("ps:stop deepok")


def test_a_tree_deeper_than_python_recursion_is_handed_over_and_discarded(deep_tmp_path: Path) -> None:
    """A build or a git checkout may make any depth: the walks over a release cope with it."""
    app_dir = deep_tmp_path / "app"
    release = releases.new_release(app_dir, "deep")
    deep_tree(release, 3000)
    modes.hand_over(release, os.geteuid(), 12345)
    leaf = os.open(release, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):
        below = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=leaf)
        os.close(leaf)
        leaf = below
    seen = os.stat("f", dir_fd=leaf)
    os.close(leaf)
    assert (seen.st_gid, stat.S_IMODE(seen.st_mode)) == (12345, 0o640)
    modes.close_to_others(release)
    releases.discard(release)
    assert not release.exists()
    assert not list(app_dir.glob(".deploying-*"))


def test_a_repository_with_deep_folders_is_deployed_and_destroyed(
    deep_tmp_path: Path, berthd: Berthd
) -> None:
    repo = deep_tmp_path / "repo"
    repo.mkdir()
    deep_tree(repo, 1200)  # a path of 2,400 characters: git checks it out
    (repo / "Procfile").write_bytes(b"web: exec sleep 1000\n")
    test_sources.git(repo, "init", "-q", "-b", "main")
    test_sources.git(repo, "add", ".")
    test_sources.git(repo, "commit", "-qm", "deep")
    answer = berthd.call(["git:sync", "deeprepo", f"file://{repo}"])
    assert answer.ok, answer.output
    assert berthd.call("apps:destroy deeprepo --force").ok
    assert not (berthd.data_dir / "apps" / "deeprepo").exists()
    assert berthd.call("ping").output == "pong"


def bz2_pieces(pieces: list[tuple[bytes, int]]) -> bytes:
    """A multi-stream bz2 of each piece repeated so many times: gigabytes compressed in a moment."""
    return b"".join(bz2.compress(data) * count for data, count in pieces)


def raw_header(name: bytes, size: int, kind: bytes) -> bytes:
    info = tarfile.TarInfo(name.decode())
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def rss_during(daemon: Berthd, action: Callable[[], object]) -> tuple[object, int]:
    """What `action` returned, and the most berthd's resident memory grew while it ran."""
    assert daemon.proc is not None
    process = psutil.Process(daemon.proc.pid)
    before, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, max(0, peak[0] - before)


@pytest.mark.parametrize(
    "kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE],
    ids=["gnu-longname", "gnu-longlink", "pax", "pax-global"],
)  # fmt: skip
def test_a_300_mib_metadata_header_is_refused_before_it_is_read(
    berthd: Berthd, http_root: tuple[Path, str], kind: bytes
) -> None:
    root, base = http_root
    size = 300 * 1024 * 1024
    (root / "name.tar.bz2").write_bytes(
        bz2_pieces([(raw_header(b"././@LongLink", size, kind), 1), (b"a" * (1 << 20), 300),
                    (raw_header(b"x", 1, tarfile.REGTYPE) + padded(b"x") + b"\0" * 1024, 1)])
    )  # fmt: skip
    assert (root / "name.tar.bz2").stat().st_size < 20_000
    answer, grew = rss_during(berthd, lambda: deploy(berthd, base, "name.tar.bz2"))
    assert isinstance(answer, dict)
    print(f"berthd grew {grew / 2**20:.1f} MiB; answer {len(str(answer['output']))} characters")
    assert_refused_cleanly(berthd, answer, "metadata header")
    assert len(str(answer["output"])) < 400
    assert grew < 50 * 2**20
    assert max(len(line) for line in berthd.log().splitlines()) < 2000


def test_a_chain_of_metadata_headers_is_refused(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    """tarfile reads the member after a long-name header by recursing: 5000 of them in a row."""
    root, base = http_root
    long_name = raw_header(b"././@LongLink", 512, tarfile.GNUTYPE_LONGNAME) + b"n" * 512
    (root / "chain.tar.gz").write_bytes(
        gzip.compress(long_name * 5000 + raw_header(b"x", 1, tarfile.REGTYPE) + padded(b"x") + b"\0" * 1024)
    )
    assert_refused_cleanly(berthd, deploy(berthd, base, "chain.tar.gz"), "metadata headers in a row")


def test_a_bz2_bomb_is_refused_before_it_is_decompressed(
    start_berthd: Callable[..., Berthd], http_root: tuple[Path, str]
) -> None:
    daemon = start_berthd(extra_args=["--max-unpacked-bytes", "1000000"])
    root, base = http_root
    gib = 1 << 30
    (root / "bomb.tar.bz2").write_bytes(
        bz2_pieces([(raw_header(b"Procfile", len(PROCFILE), tarfile.REGTYPE) + padded(PROCFILE)
                     + raw_header(b"zeros", gib, tarfile.REGTYPE), 1), (b"\0" * (1 << 24), 64),
                    (b"\0" * 1024, 1)])
    )  # fmt: skip
    print(f"the bomb is {(root / 'bomb.tar.bz2').stat().st_size} bytes")
    started = time.monotonic()
    answer = deploy(daemon, base, "bomb.tar.bz2")
    took = time.monotonic() - started
    print(f"refused in {took:.2f} s")
    assert_refused_cleanly(daemon, answer, "more than 1000000 bytes")
    assert took < 1.5, f"a 1 GiB member took {took:.1f} s to refuse"


def test_unpacking_stops_at_its_deadline_whatever_the_archive_claims(tmp_path: Path) -> None:
    """The worker thread cannot be cancelled: unpacking gives up by itself between decompressed blocks."""
    archive_path = tmp_path / "slow.tar.bz2"
    archive_path.write_bytes(
        bz2_pieces([(raw_header(b"zeros", 1 << 30, tarfile.REGTYPE), 1), (b"\0" * (1 << 24), 64),
                    (b"\0" * 1024, 1)])
    )  # fmt: skip
    (tmp_path / "out").mkdir()
    started = time.monotonic()
    with pytest.raises(extract.ArchiveError, match="took longer than 0.2 s"):
        extract.unpack(archive_path, tmp_path / "out", 2 << 30, 10, max_seconds=0.2)
    took = time.monotonic() - started
    print(f"gave up after {took:.2f} s")
    assert took < 1.0
