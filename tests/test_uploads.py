"""Uploads as the standalone-services seed's clients send them: fixed-size chunks with a shorter last one
(`--chunk-size`, or learnt from the chunks), the seed's 1 MiB chunk within the default line limit, upload
groups of several files placed by relative path, and `berth upload` with several files."""

from __future__ import annotations

import base64
import hashlib
import random
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from berth.client import Client, CommandFailed
from berth.messages import Response
from berth.upload import upload_file
from tests.daemon_proc import ROOT, Berthd
from tests.test_hostile_clients import open_berthd, upload_begin_as  # noqa: F401  (a fixture)
from tests.test_sources import interrupt_upload
from tests.users import NEEDS_ROOT, system_users

MIB = 1024 * 1024
SCRIPT = b"#!/bin/sh\necho uploaded in fixed chunks\nexit 0\n"


def payload(size: int, seed: int = 1) -> bytes:
    """An executable of `size` bytes: a shell script, then bytes it never reaches."""
    return SCRIPT + random.Random(seed).randbytes(size - len(SCRIPT))


def fixed_chunks(data: bytes, size: int) -> list[bytes]:
    """The seed's client: every chunk `size` bytes, the last one the rest."""
    return [data[at : at + size] for at in range(0, len(data), size)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def berth(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The real `berth` CLI, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "berth.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def leftovers(daemon: Berthd) -> list[str]:
    uploads = daemon.data_dir / "uploads"
    return sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []


# the chunk size: given, or learnt


@pytest.mark.parametrize("given", [True, False], ids=["chunk-size-given", "chunk-size-learnt"])
@pytest.mark.parametrize("last_first", [False, True], ids=["shuffled", "last-chunk-first"])
def test_the_seeds_upload_with_fixed_1mib_chunks_and_a_short_last_one(
    berthd: Berthd, given: bool, last_first: bool
) -> None:
    data = payload(3 * MIB + 12_345)
    pieces = fixed_chunks(data, MIB)
    assert [len(p) for p in pieces] == [MIB, MIB, MIB, 12_345]
    option = ["--chunk-size", str(MIB)] if given else []
    with Client(berthd.socket) as client:
        begin = client.call(
            ["upload:begin", "seed", "seed-app", str(len(data)), "4", "--sha256",
             hashlib.sha256(data).hexdigest(), *option],
        )  # fmt: skip
        assert begin.ok, begin.output
        session = begin.data["session_id"]
        if given:
            assert begin.data["chunk_size"] == MIB
        order = [0, 1, 2, 3]
        random.Random(3).shuffle(order)
        if last_first:
            order.remove(3)
            order.insert(0, 3)
        order.append(order[1])  # a repeat is harmless
        for index in order:
            # the default line limit takes the seed's default 1 MiB chunk in base64
            answer = client.call(["upload:chunk", session, str(index), b64(pieces[index])])
            assert answer.ok, (index, answer.output)
        status = client.call(["upload:status", session])
        assert (status.data["missing"], status.data["chunk_size"]) == ([], MIB)
        end = client.call(["upload:end", session])
    assert end.ok, end.output
    assert Path(end.data["executable"]).read_bytes() == data
    run = berthd.call("run seed")
    assert run.ok, run.output
    assert (Path(run.data["output_dir"]) / "stdout.txt").read_text() == "uploaded in fixed chunks\n"


def test_a_learnt_chunk_size_is_kept_across_a_restart(berthd: Berthd) -> None:
    data = payload(250_000)
    pieces = fixed_chunks(data, 64_000)  # 4 chunks: 64000 x 3 and 58000
    session = berthd.call(["upload:begin", "learnt", "app", str(len(data)), "4"]).data["session_id"]
    assert berthd.call(["upload:chunk", session, "1", b64(pieces[1])]).ok
    berthd.stop()
    berthd.start()
    status = berthd.call(["upload:status", session])
    assert (status.data["chunk_size"], status.data["received"]) == (64_000, [1])
    refused = berthd.call(["upload:chunk", session, "0", b64(data[:65_000])])
    assert (refused.ok, refused.error) == (False, "invalid_argument")
    assert "chunk 0 has 65000 bytes, expected 64000" in refused.output
    for index in (3, 0, 2):
        assert berthd.call(["upload:chunk", session, str(index), b64(pieces[index])]).ok
    end = berthd.call(["upload:end", session])
    assert end.ok, end.output
    assert Path(end.data["executable"]).read_bytes() == data


@pytest.mark.parametrize("given", [True, False], ids=["chunk-size-given", "chunk-size-learnt"])
def test_a_chunk_of_the_wrong_size_is_refused_clearly_and_leaves_nothing(berthd: Berthd, given: bool) -> None:
    data = payload(100_000)
    option = ["--chunk-size", "30000"] if given else []
    session = berthd.call(["upload:begin", "wrong", "app", "100000", "4", *option]).data["session_id"]
    if not given:
        assert berthd.call(["upload:chunk", session, "2", b64(data[60_000:90_000])]).ok  # learnt: 30000
    cases = [
        ("0", data[:29_999], "chunk 0 has 29999 bytes, expected 30000"),
        ("1", data[30_000:60_001], "chunk 1 has 30001 bytes, expected 30000"),
        ("3", data[89_000:], "chunk 3 has 11000 bytes, expected 10000 (the last chunk holds the rest)"),
    ]
    for index, chunk, message in cases:
        answer = berthd.call(["upload:chunk", session, index, b64(chunk)])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), index
        assert message in answer.output, answer.output
    status = berthd.call(["upload:status", session])
    assert status.data["received"] == ([] if given else [2])
    assert berthd.call(["upload:abort", session]).ok
    assert leftovers(berthd) == []
    assert berthd.call("apps:list").data == []


def test_a_first_chunk_that_fits_no_fixed_size_is_refused_and_nothing_is_learnt(berthd: Berthd) -> None:
    session = berthd.call(["upload:begin", "odd", "app", "100", "4"]).data["session_id"]
    too_big = berthd.call(
        ["upload:chunk", session, "0", b64(b"x" * 40)]
    )  # 3 x 40 leaves nothing for the last
    assert (too_big.ok, too_big.error) == (False, "invalid_argument")
    assert "chunk 0 has 40 bytes" in too_big.output and "nothing for the last" in too_big.output
    uneven = berthd.call(["upload:chunk", session, "3", b64(b"x" * 11)])  # 89 bytes in 3 equal chunks: no
    assert (uneven.ok, uneven.error) == (False, "invalid_argument")
    assert "chunk 3 has 11 bytes" in uneven.output
    status = berthd.call(["upload:status", session])
    assert (status.data["received"], status.data["chunk_size_fixed"]) == ([], False)
    assert berthd.call(["upload:chunk", session, "3", b64(b"x" * 10)]).ok  # 3 x 30 and the last 10
    assert berthd.call(["upload:status", session]).data["chunk_size"] == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chunk-size", "0"], "invalid --chunk-size: expected `int` >= 1"),
        (["--chunk-size", "-3"], "invalid --chunk-size: expected `int` >= 1"),
        (["--chunk-size", "40"], "3 chunks of 40 bytes leave nothing for the last"),  # 100 bytes, 4 chunks
    ],
)
def test_begin_refuses_a_chunk_size_that_cannot_be(berthd: Berthd, args: list[str], message: str) -> None:
    answer = berthd.call(["upload:begin", "bad", "app", "100", "4", *args])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert message in answer.output, answer.output
    assert leftovers(berthd) == []


def test_a_chunk_size_whose_lines_would_be_too_long_is_refused_at_begin(
    start_berthd: Callable[..., Berthd],
) -> None:
    daemon = start_berthd(extra_args=["--max-line", "10000"])
    answer = daemon.call(["upload:begin", "long", "app", "100000", "10", "--chunk-size", "10000"])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert "--max-line" in answer.output
    largest = answer.data["max_chunk_size"]
    assert 7000 < largest < 7500
    fits = daemon.call(["upload:begin", "long", "app", "100000", "14", "--chunk-size", str(largest)])
    assert fits.ok, fits.output
    chunk = daemon.call(["upload:chunk", fits.data["session_id"], "0", b64(b"x" * largest)])
    assert chunk.ok, chunk.output  # the line of the largest chunk fits indeed


def test_the_default_line_limit_is_2_mib(berthd: Berthd) -> None:
    with Client(berthd.socket) as client:
        fits = client.call(["ping", "x" * (2 * MIB - 100)])
        assert fits.error == "invalid_argument"  # read whole, then refused for its arguments
        over = client.call(["ping", "x" * (2 * MIB + 10)])
        assert over.error == "line_too_long"


# upload groups


def begin_file(
    client: Client, app: str, group: str, index: int, path: str, data: bytes, *extra: str, total: int = 3
) -> Response:
    return client.call(
        ["upload:begin", app, path, str(len(data)), "1", "--sha256", hashlib.sha256(data).hexdigest(),
         "--group", group, "--file-index", str(index), "--total-files", str(total), *extra],
    )  # fmt: skip


TOOL = b"#!/bin/sh\ncat data/greeting.txt\ncat conf/app.ini\n"
GROUP_FILES = [
    ("data/greeting.txt", b"hello from the group\n", ()),
    ("bin/tool", TOOL, ("--executable", "--description", "a group")),
    ("conf/app.ini", b"colour=blue\n", ()),
]


def send_group(
    daemon: Berthd,
    app: str,
    group: str,
    end_order: list[int],
    files: list[tuple[str, bytes, tuple[str, ...]]],
) -> list[Response]:
    """Begin every file, send its one chunk, then end them in `end_order`: the answers to the ends."""
    with Client(daemon.socket) as client:
        sessions = []
        for index, (path, data, extra) in enumerate(files):
            begin = begin_file(client, app, group, index, path, data, *extra, total=len(files))
            assert begin.ok, begin.output
            sessions.append(begin.data["session_id"])
            assert client.call(["upload:chunk", sessions[-1], "0", b64(data)]).ok
        return [client.call(["upload:end", sessions[index]]) for index in end_order]


@pytest.mark.parametrize("end_order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_a_three_file_group_lands_together_and_runs(berthd: Berthd, end_order: list[int]) -> None:
    app_dir = berthd.data_dir / "apps" / "grouped"
    with Client(berthd.socket) as client:
        sessions = []
        for index, (path, data, extra) in enumerate(GROUP_FILES):
            begin = begin_file(client, "grouped", "g-1", index, path, data, *extra)
            assert begin.ok, begin.output
            sessions.append(begin.data["session_id"])
            assert client.call(["upload:chunk", sessions[-1], "0", b64(data)]).ok
        for done, index in enumerate(end_order[:-1], start=1):
            waiting = client.call(["upload:end", sessions[index]])
            assert waiting.ok, waiting.output
            assert waiting.data["complete"] is False
            assert sorted(waiting.data["waiting_for"]) == sorted(end_order[done:])
            assert not (app_dir / "current").exists()  # nothing half-visible
            again = client.call(["upload:chunk", sessions[index], "0", b64(b"changed")])
            assert again.error == "conflict" and "has ended" in again.output
            assert client.call("apps:list").data == []
        status = client.call(["upload:status", sessions[end_order[0]]])
        assert status.data["group"] == "g-1" and status.data["ended"] is True
        final = client.call(["upload:end", sessions[end_order[-1]]])
    assert final.ok, final.output
    # the seed's FILE_UPLOAD_COMPLETE: the group and its files
    assert final.data["complete"] is True
    assert final.data["group"] == "g-1"
    assert final.data["files"] == ["data/greeting.txt", "bin/tool", "conf/app.ini"]
    assert final.data["executable"] == str(app_dir / "current" / "bin" / "tool")
    current = app_dir / "current"
    assert current.is_symlink()
    for path, data, extra in GROUP_FILES:
        placed = current / path
        assert placed.read_bytes() == data
        mode = stat.S_IMODE(placed.lstat().st_mode)
        assert mode == (0o755 if "--executable" in extra else 0o644), (path, oct(mode))
    assert leftovers(berthd) == []
    info = berthd.call("apps:info grouped").data
    assert info["settings"]["description"] == "a group"
    assert info["source"] == "upload"
    run = berthd.call("run grouped")
    assert run.ok, run.output
    assert (Path(run.data["output_dir"]) / "stdout.txt").read_text() == "hello from the group\ncolour=blue\n"


def test_a_new_group_replaces_the_last_in_one_switch(berthd: Berthd) -> None:
    assert all(answer.ok for answer in send_group(berthd, "twice", "first", [0, 1, 2], GROUP_FILES))
    first = (berthd.data_dir / "apps" / "twice" / "current").resolve()
    second_files = [
        ("bin/tool", b"#!/bin/sh\ncat notes.txt\n", ("--executable",)),
        ("notes.txt", b"second\n", ()),
    ]
    final = send_group(berthd, "twice", "second", [1, 0], second_files)[-1]
    assert final.ok, final.output
    current = (berthd.data_dir / "apps" / "twice" / "current").resolve()
    assert current != first
    assert sorted(p.name for p in current.iterdir()) == ["bin", "notes.txt"]
    run = berthd.call("run twice")
    assert (Path(run.data["output_dir"]) / "stdout.txt").read_text() == "second\n"
    single = berthd.call(["upload:begin", "twice", "plain", str(len(SCRIPT)), "1"])  # a single file after
    assert berthd.call(["upload:chunk", single.data["session_id"], "0", b64(SCRIPT)]).ok
    assert berthd.call(["upload:end", single.data["session_id"]]).ok
    run = berthd.call("run twice")
    assert (Path(run.data["output_dir"]) / "stdout.txt").read_text() == "uploaded in fixed chunks\n"


@pytest.mark.parametrize("path", ["../x", "/etc/x", "a/../../x", "a/../x", "", "a\x00b"])
def test_group_paths_stay_in_the_apps_folder(berthd: Berthd, path: str) -> None:
    with Client(berthd.socket) as client:
        answer = begin_file(client, "confined", "g", 0, path, b"data", "--executable", total=1)
    assert (answer.ok, answer.error) == (False, "invalid_argument"), path
    assert "file path" in answer.output
    assert leftovers(berthd) == []
    assert not (berthd.data_dir / "apps" / "confined").exists()


def test_a_group_has_exactly_one_executable_and_one_file_a_place(berthd: Berthd) -> None:
    with Client(berthd.socket) as client:
        first = begin_file(client, "rules", "g", 0, "bin/a", b"a", "--executable")
        assert first.ok, first.output
        second_executable = begin_file(client, "rules", "g", 1, "bin/b", b"b", "--executable")
        assert (second_executable.error, "one --executable") == ("invalid_argument", "one --executable")
        assert "one --executable" in second_executable.output
        same_index = begin_file(client, "rules", "g", 0, "bin/c", b"c")
        assert same_index.error == "conflict" and "file index 0" in same_index.output
        same_path = begin_file(client, "rules", "g", 1, "bin/a", b"c")
        assert same_path.error == "conflict" and "bin/a" in same_path.output
        under_a_file = begin_file(client, "rules", "g", 1, "bin/a/x", b"c")
        assert under_a_file.error == "conflict"
        other_total = begin_file(client, "rules", "g", 1, "bin/d", b"d", total=4)
        assert other_total.error == "invalid_argument" and "--total-files" in other_total.output
        index_out = begin_file(client, "rules", "g", 3, "bin/d", b"d")
        assert index_out.error == "invalid_argument" and "--file-index" in index_out.output
        options_elsewhere = begin_file(client, "rules", "g", 1, "bin/d", b"d", "--env", "A=1")
        assert options_elsewhere.error == "invalid_argument" and "--executable" in options_elsewhere.output
        assert begin_file(client, "rules", "g", 1, "lib/d", b"d").ok
        no_executable = client.call(  # a group of two, neither executable
            [
                "upload:begin",
                "rules",
                "x",
                "1",
                "1",
                "--group",
                "h",
                "--file-index",
                "0",
                "--total-files",
                "1",
            ]
        )
        assert no_executable.error == "invalid_argument" and "--executable" in no_executable.output
        half = client.call(["upload:begin", "rules", "x", "1", "1", "--group", "h"])
        assert half.error == "invalid_argument" and "--file-index" in half.output


def test_a_group_counts_against_the_upload_limits(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--max-uploads-per-app", "2"])
    with Client(daemon.socket) as client:
        too_many = begin_file(client, "limited", "g", 0, "a", b"a", "--executable", total=3)
        assert too_many.error == "busy" and "3 files" in too_many.output
        assert begin_file(client, "limited", "h", 0, "a", b"a", "--executable", total=2).ok
        assert begin_file(client, "limited", "h", 1, "b", b"b", total=2).ok
        third = client.call(["upload:begin", "limited", "tool", "1", "1"])
        assert third.error == "busy"
    assert leftovers(daemon) != []


@NEEDS_ROOT
def test_a_group_counts_against_one_users_uploads_and_is_that_users_own(
    open_berthd: Callable[..., Berthd],  # noqa: F811  (the fixture imported above)
) -> None:
    daemon = open_berthd("--max-uploads", "16", "--max-uploads-per-uid", "2")

    def of_group(group: str, index: int, total: int, *extra: str) -> list[str]:
        return ["--group", group, "--file-index", str(index), "--total-files", str(total), *extra]

    with system_users("upga", "upgb") as (alice, bob):
        too_many = upload_begin_as(alice, daemon, "shared", 10, 1, *of_group("g", 0, 3, "--executable"))
        assert too_many["error"] == "busy" and "3 files" in too_many["output"], too_many
        assert upload_begin_as(alice, daemon, "shared", 10, 1, *of_group("g", 0, 2, "--executable"))["ok"]
        assert upload_begin_as(alice, daemon, "shared", 10, 1, *of_group("g", 1, 2), name="data")["ok"]
        assert upload_begin_as(alice, daemon, "other", 10)["error"] == "busy"  # her two sessions are taken
        # the same group name from another user is a group of that user's: index 0 is free there
        theirs = upload_begin_as(bob, daemon, "shared", 10, 1, *of_group("g", 0, 2, "--executable"))
        assert theirs["ok"], theirs
        assert upload_begin_as(None, daemon, "shared", 10, 1, *of_group("g", 0, 5, "--executable"))["ok"]


def test_a_group_resumes_across_a_restart(berthd: Berthd) -> None:
    big = payload(300_000)
    tool = b"#!/bin/sh\ncat data/greeting.txt\n"
    files = [
        ("bin/tool", tool, ("--executable",)),
        ("data/greeting.txt", b"resumed\n", ()),
        ("blob", big, ()),
    ]
    with Client(berthd.socket) as client:
        sessions = [begin_file(client, "resume", "g", 0, "bin/tool", tool, "--executable").data["session_id"]]
        sessions.append(
            begin_file(client, "resume", "g", 1, "data/greeting.txt", b"resumed\n").data["session_id"]
        )
        blob = client.call(
            ["upload:begin", "resume", "blob", str(len(big)), "3", "--chunk-size", "100000",
             "--group", "g", "--file-index", "2", "--total-files", "3"]
        )  # fmt: skip
        sessions.append(blob.data["session_id"])
        assert client.call(["upload:chunk", sessions[0], "0", b64(tool)]).ok
        assert client.call(["upload:end", sessions[0]]).data["complete"] is False
        assert client.call(["upload:chunk", sessions[2], "1", b64(big[100_000:200_000])]).ok
    berthd.stop()
    berthd.start()
    with Client(berthd.socket) as client:
        assert client.call(["upload:status", sessions[0]]).data["ended"] is True
        assert client.call(["upload:status", sessions[2]]).data["missing"] == [0, 2]
        assert client.call(["upload:chunk", sessions[1], "0", b64(b"resumed\n")]).ok
        assert client.call(["upload:end", sessions[1]]).data["waiting_for"] == [2]
        for index in (0, 2):
            piece = big[index * 100_000 : (index + 1) * 100_000]
            assert client.call(["upload:chunk", sessions[2], str(index), b64(piece)]).ok
        final = client.call(["upload:end", sessions[2]])
    assert final.ok, final.output
    assert final.data["files"] == [path for path, _, _ in files]
    assert (berthd.data_dir / "apps" / "resume" / "current" / "blob").read_bytes() == big
    run = berthd.call("run resume")
    assert run.ok, run.output
    assert (Path(run.data["output_dir"]) / "stdout.txt").read_text() == "resumed\n"


# berth upload


def test_berth_upload_sends_a_group_in_1mib_chunks_within_the_default_line_limit(
    berthd: Berthd, tmp_path: Path
) -> None:
    folder = tmp_path / "bundle"
    (folder / "data").mkdir(parents=True)
    tool = folder / "tool"
    tool.write_bytes(TOOL.replace(b"conf/app.ini", b"data/big.bin >/dev/null; echo big read"))
    (folder / "data" / "greeting.txt").write_bytes(b"hello from berth upload\n")
    big = payload(2 * MIB + 77)
    (folder / "data" / "big.bin").write_bytes(big)
    result = berth(
        "--socket", str(berthd.socket), "upload", "bundled", "tool", "data/greeting.txt", "data/big.bin",
        "--executable", "tool", "--description", "sent by berth", cwd=folder,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 files" in result.stdout
    current = berthd.data_dir / "apps" / "bundled" / "current"
    assert (current / "data" / "big.bin").read_bytes() == big
    assert stat.S_IMODE((current / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((current / "data" / "big.bin").stat().st_mode) == 0o644
    run = berthd.call("run bundled")
    assert (Path(run.data["output_dir"]) / "stdout.txt").read_text() == "hello from berth upload\nbig read\n"
    assert berthd.call("apps:info bundled").data["settings"]["description"] == "sent by berth"
    log = berthd.log()
    assert "line_too_long" not in log
    assert log.count("--chunk-size=1048576") == 3  # the seed's default chunk, in lines berthd reads whole


def test_berth_upload_of_one_file_still_makes_it_the_executable(berthd: Berthd, tmp_path: Path) -> None:
    path = tmp_path / "single"
    path.write_bytes(payload(MIB + 5))
    result = berth("--socket", str(berthd.socket), "upload", "single", str(path))
    assert result.returncode == 0, result.stderr
    assert berthd.call("apps:info single").data["settings"]["executable"].endswith("/bin/single")
    assert berthd.call("run single").ok


@pytest.mark.parametrize("size", ["0", "-5", "many"])
def test_berth_upload_refuses_a_chunk_size_that_is_not_positive(
    berthd: Berthd, tmp_path: Path, size: str
) -> None:
    path = tmp_path / "tool"
    path.write_bytes(SCRIPT)
    result = berth("--socket", str(berthd.socket), "upload", "nope", str(path), "--chunk-size", size)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--chunk-size" in result.stderr and "usage:" in result.stderr
    assert berthd.call("apps:list").data == []
    assert leftovers(berthd) == []


def test_berth_upload_refuses_an_executable_that_is_not_among_the_files(
    berthd: Berthd, tmp_path: Path
) -> None:
    (tmp_path / "a").write_bytes(SCRIPT)
    (tmp_path / "b").write_bytes(b"b")
    result = berth("--socket", str(berthd.socket), "upload", "nope", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode == 2 and "--executable" in result.stderr
    other = berth(
        "--socket", str(berthd.socket), "upload", "nope", str(tmp_path / "a"), str(tmp_path / "b"),
        "--executable", "c",
    )  # fmt: skip
    assert other.returncode == 2 and "--executable" in other.stderr
    assert leftovers(berthd) == []


def test_a_failed_resume_drops_its_state_so_the_next_try_works(
    start_berthd: Callable[..., Berthd], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "tool"
    path.write_bytes(payload(3_000_000))  # 20 chunks: the interrupted try leaves most of them to send
    daemon = start_berthd()
    interrupt_upload(daemon.socket, "resumer", path, [], 150_000)
    daemon.stop()
    # berthd comes back with a line limit the saved session's chunks no longer fit in
    daemon.extra_args = ["--max-line", "100000"]
    daemon.start()
    with Client(daemon.socket) as client, pytest.raises(CommandFailed):
        upload_file(client, "resumer", path, [], 150_000, lambda done, total: None)
    states = list((tmp_path / "cache" / "berth" / "uploads").iterdir())
    assert states == []  # dropped, and its session with it
    with Client(daemon.socket) as client:
        result = upload_file(client, "resumer", path, [], 150_000, lambda done, total: None)
    assert result["size"] == 3_000_000
    assert daemon.call("run resumer").ok
    assert leftovers(daemon) == []


def test_a_session_begun_before_chunk_sizes_were_kept_goes_on_with_its_even_split(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    """A data dir of the schema before (7), with a session half sent as berthd then split chunks:
    ceil(size / chunks) each. After the upgrade, the session goes on with that size."""
    import sqlite3
    import time

    from berthd.store.migrations import MIGRATIONS

    data = payload(10_000)
    data_dir = tmp_path / "berthd" / "data"
    (data_dir / "uploads").mkdir(parents=True)
    conn = sqlite3.connect(data_dir / "berthd.db", isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:7], start=1):
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={number}")
    options = b'{"app":"older","filename":"app","total_size":10000,"total_chunks":3}'
    conn.execute(
        "INSERT INTO uploads (id, app, filename, total_size, total_chunks, sha256, received, created_at,"
        " options, uid) VALUES (?, 'older', 'app', 10000, 3, NULL, ?, ?, ?, 0)",
        ("up-olderolderolder1", bytes([0b001]), time.time(), options),
    )
    conn.close()
    part = data_dir / "uploads" / "up-olderolderolder1.part"
    part.write_bytes(data[:3334] + bytes(10_000 - 3334))  # chunk 0 of 3334 bytes, as berthd wrote it
    daemon = start_berthd()
    status = daemon.call(["upload:status", "up-olderolderolder1"])
    assert status.ok, status.output
    assert (status.data["chunk_size"], status.data["chunk_size_fixed"], status.data["missing"]) == (
        3334,
        True,
        [1, 2],
    )
    assert daemon.call(["upload:chunk", "up-olderolderolder1", "1", b64(data[3334:6668])]).ok
    assert daemon.call(["upload:chunk", "up-olderolderolder1", "2", b64(data[6668:])]).ok
    end = daemon.call(["upload:end", "up-olderolderolder1"])
    assert end.ok, end.output
    assert Path(end.data["executable"]).read_bytes() == data
