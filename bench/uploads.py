"""Upload throughput: a 100 MB file of random bytes sent through the socket with `upload_file` (what
`berth upload` runs: sha256, `upload:begin`, one `upload:chunk` of base64 at a time, `upload:end`),
against writing the same bytes to a file in the same file system (open, write by the same chunk size,
fsync). MB/s are of file data, 1 MB = 10^6 bytes.

Each upload's installed executable is checked against the file's sha256. Rows: the default chunk size
and a larger one still under the 1 MiB line limit, with berthd's default `--sync full`, and the default
chunk with `--sync normal`.

Then where one chunk's time goes: the client's part timed in the benchmark's process; the transport's
floor (the same line to the bare trio echo server); and berthd's part, from chunks it refuses at two
depths and chunks it stores, so the differences are what its steps cost inside berthd itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.clients import OK_PREFIX, LineSocket
from bench.processes import BenchError, ServerProcess, Session
from bench.report import NO_GOAL, Comparison, ms, print_comparisons, print_table, print_title
from berth.client import Client, CommandFailed, encode_request
from berth.upload import DEFAULT_CHUNK, upload_file

MB = 1_000_000
SIZE = 100 * MB
LARGE_CHUNK = 700_000  # 933,336 bytes of base64: the request line stays under berthd's 1 MiB limit
ROUNDS = 2  # each row; the best is shown (the machine's noise only ever slows a run down)
BLOCK = 2**20  # writing the payload, hashing the result
STEP_REPEATS = 20  # each step of one chunk: the median of this many
UPLOAD_TIMEOUT = 120.0
MALFORMED_SESSION = "up-x"  # refused by its shape, before the store is asked
STANDALONE_SESSION = "up-AAAAAAAAAAAAAAAA"  # a real one's shape, for the lines berthd never sees


@dataclass(frozen=True)
class Payload:
    path: Path
    sha256: str


@dataclass(frozen=True)
class Timing:
    seconds: float
    part_seconds: float  # upload: the chunks alone; disk: the fsync alone

    @property
    def rate(self) -> float:
        return SIZE / MB / self.seconds


@dataclass
class Row:
    how: str
    chunk_size: int
    part: str
    timings: list[Timing]

    def best(self) -> Timing:
        return min(self.timings, key=lambda timing: timing.seconds)

    def cells(self) -> list[str]:
        best = self.best()
        return [self.how, f"{self.chunk_size:,}", str(len(self.timings)), f"{best.seconds:.2f}",
                f"{best.rate:.0f}", f"{self.part} {best.part_seconds:.2f} s"]  # fmt: skip


@dataclass(frozen=True)
class ChunkSteps:
    """Seconds, each the median of `STEP_REPEATS`; berthd's are whole round trips."""

    client: float
    echo: float
    refused_early: float
    refused_decoded: float
    stored: float
    commit_full: float
    commit_normal: float


def make_payload(folder: Path) -> Payload:
    path = folder / "payload.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        for start in range(0, SIZE, BLOCK):
            block = os.urandom(min(BLOCK, SIZE - start))
            digest.update(block)
            file.write(block)
    return Payload(path, digest.hexdigest())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_to_disk(payload: Payload, folder: Path, chunk_size: int) -> Timing:
    """The same bytes read the way the client reads them, written to a new file and fsynced."""
    target = folder / "disk-copy.bin"
    started = time.perf_counter()
    with open(payload.path, "rb") as source:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while data := source.read(chunk_size):
                os.write(fd, data)
            syncing = time.perf_counter()
            os.fsync(fd)
        finally:
            os.close(fd)
    finished = time.perf_counter()
    target.unlink()
    return Timing(finished - started, finished - syncing)


@contextlib.contextmanager
def private_cache(folder: Path) -> Iterator[None]:
    """`upload_file` remembers unfinished sessions under $XDG_CACHE_HOME: here, not in the user's."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = before


def upload(berthd: ServerProcess, payload: Payload, app: str, chunk_size: int) -> Timing:
    """From the call to `upload_file` to its return; the chunks' part from its progress calls (the
    first comes after `upload:begin`, the last after the last chunk's answer)."""
    marks: list[float] = []

    def progress(done: int, total: int) -> None:
        marks.append(time.perf_counter())

    with Client(berthd.socket, timeout=UPLOAD_TIMEOUT) as client:
        started = time.perf_counter()
        try:
            result = upload_file(client, app, payload.path, [], chunk_size, progress)
        except CommandFailed as exc:
            raise BenchError(f"berthd refused the upload to {app}: {exc}") from None
        finished = time.perf_counter()
        executable = Path(str(result["executable"]))
        if result["upload_hash"] != payload.sha256 or sha256_of(executable) != payload.sha256:
            raise BenchError(f"the file berthd installed for {app} is not the one uploaded")
        answer = client.call(["apps:destroy", app, "--force"])  # its 100 MB go with it
        if not answer.ok:
            raise BenchError(f"berthd answered apps:destroy {app} with {answer.output}")
    return Timing(finished - started, marks[-1] - marks[0])


def with_berthd(
    session: Session, payload: Payload, chunk_sizes: Sequence[int], sync: str, profile_to: Path | None
) -> list[tuple[Row, Row]]:
    """For each chunk size, `ROUNDS` uploads, each next to a write of the same bytes to disk."""
    data_dir = session.new_dir("data")
    berthd = session.start_berthd(data_dir, profile_to=profile_to, options=["--sync", sync])
    pairs: list[tuple[Row, Row]] = []
    try:
        berthd.wait_ready()
        for chunk_size in chunk_sizes:
            disk = Row("disk: open, write, fsync", chunk_size, "fsync", [])
            uploaded = Row(f"berthd --sync {sync}: upload_file", chunk_size, "chunks", [])
            for index in range(ROUNDS):
                disk.timings.append(write_to_disk(payload, data_dir, chunk_size))
                app = f"up-{sync}-{chunk_size}-{index}"
                uploaded.timings.append(upload(berthd, payload, app, chunk_size))
            pairs.append((disk, uploaded))
    finally:
        session.stop(berthd)
    return pairs


def median_time(step: Callable[[], object]) -> float:
    timings = []
    for _ in range(STEP_REPEATS):
        started = time.perf_counter()
        step()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def chunk_line(session_id: str, index: int, data: bytes) -> bytes:
    return encode_request(["upload:chunk", session_id, str(index), base64.b64encode(data).decode()])


def round_trip(conn: LineSocket, lines: Sequence[bytes], expected: bytes) -> float:
    """The median round trip of the lines, in turn; every answer must contain `expected`."""
    turns = itertools.cycle(lines)

    def call() -> None:
        answer = conn.request(next(turns))
        if expected not in answer:
            raise BenchError(f"a probe chunk was answered {answer[:300]!r}, expected {expected!r} in it")

    return median_time(call)


def commit_time(folder: Path, synchronous: str) -> float:
    """One chunk's bookkeeping as the store does it, alone: in a WAL database in the same file
    system, one transaction that reads the session's bitmap and writes it back."""
    path = folder / f"commit-{synchronous.lower()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE uploads (id TEXT PRIMARY KEY, received BLOB NOT NULL)")
        conn.execute("INSERT INTO uploads VALUES (?, ?)", (STANDALONE_SESSION, bytes(32)))

        def mark() -> None:
            conn.execute("BEGIN IMMEDIATE")
            select = "SELECT received FROM uploads WHERE id = ?"
            (received,) = conn.execute(select, (STANDALONE_SESSION,)).fetchone()
            conn.execute("UPDATE uploads SET received = ? WHERE id = ?", (received, STANDALONE_SESSION))
            conn.execute("COMMIT")

        return median_time(mark)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def berthd_round_trips(berthd: ServerProcess, raw: bytes) -> tuple[float, float, float]:
    """A chunk refused by its session id's shape, one refused for its length (after the store read and
    the base64 decoding), and chunks stored, each at a new index as in an upload."""
    size, count = str(STEP_REPEATS * len(raw)), str(STEP_REPEATS)
    with Client(berthd.socket, timeout=UPLOAD_TIMEOUT) as client:
        begun = client.call(["upload:begin", "chunk-steps", "steps.bin", size, count])
        if not begun.ok:
            raise BenchError(f"berthd answered upload:begin with {begun.output}")
        session_id = str(begun.data["session_id"])
        try:
            with LineSocket(berthd.socket, timeout=UPLOAD_TIMEOUT) as conn:
                early = round_trip(conn, [chunk_line(MALFORMED_SESSION, 0, raw)], b"no upload session")
                decoded = round_trip(conn, [chunk_line(session_id, 0, raw[:-1])], b"expected")
                each_index = [chunk_line(session_id, index, raw) for index in range(STEP_REPEATS)]
                stored = round_trip(conn, each_index, OK_PREFIX)
        finally:
            client.call(["upload:abort", session_id])
    return early, decoded, stored


def chunk_steps(session: Session, payload: Payload, chunk_size: int) -> ChunkSteps:
    def client_side() -> bytes:
        with open(payload.path, "rb") as source:
            source.seek(chunk_size)
            return chunk_line(STANDALONE_SESSION, 1, source.read(chunk_size))

    client = median_time(client_side)
    with open(payload.path, "rb") as source:
        raw = source.read(chunk_size)
    echo = session.start_echo()
    berthd = session.start_berthd()
    try:
        echo.wait_ready()
        berthd.wait_ready()
        with LineSocket(echo.socket, timeout=UPLOAD_TIMEOUT) as conn:
            floor = round_trip(conn, [client_side()], OK_PREFIX)
        early, decoded, stored = berthd_round_trips(berthd, raw)
    finally:
        session.stop(berthd)
        session.stop(echo)
    folder = payload.path.parent
    return ChunkSteps(client, floor, early, decoded, stored, commit_time(folder, "FULL"),
                      commit_time(folder, "NORMAL"))  # fmt: skip


def print_steps(steps: ChunkSteps, chunk_size: int, measured: Timing) -> None:
    chunks = -(-SIZE // chunk_size)
    per_chunk = measured.part_seconds / chunks
    print(
        f"\n   Where one {chunk_size:,}-byte chunk's time goes (median of {STEP_REPEATS} each, ms). "
        "One chunk is in flight at a time,\n   so the client's part and berthd's add up; berthd's "
        "rows are round trips, each deeper than the one before."
    )
    print_table(
        ["step", "ms", "more than the row above"],
        [
            ["client: read, base64-encode, encode the request line", ms(steps.client), ""],
            ["bare trio echo: the same line there and back (transport floor)", ms(steps.echo), ""],
            ["berthd: refused by the session id's shape: read, frame, parse, bind",
             ms(steps.refused_early), ms(steps.refused_early - steps.echo)],
            ["berthd: refused for its length: + store read, base64-decode",
             ms(steps.refused_decoded), ms(steps.refused_decoded - steps.refused_early)],
            ["berthd: stored, each at a new index: + pwrite, SQLite commit",
             ms(steps.stored), ms(steps.stored - steps.refused_decoded)],
            ["SQLite commit alone, sync FULL (this file system)", ms(steps.commit_full), ""],
            ["SQLite commit alone, sync NORMAL", ms(steps.commit_normal), ""],
            ["client + berthd stored", ms(steps.client + steps.stored), ""],
            [f"measured: the best --sync full upload's chunks phase / {chunks}", ms(per_chunk), ""],
        ],
    )  # fmt: skip


def run(session: Session, profile_to: Path | None = None) -> None:
    print_title(
        f"upload throughput: a {SIZE // MB} MB file of random bytes (MB/s of file data)",
        "upload_file: client sha256, upload:begin, the chunks, four in flight (base64 in a JSON line), "
        "upload:end (berthd's sha256, rename);",
        "disk: the same bytes, read by the same chunk size, written to a new file in the same file "
        "system, fsynced (berthd syncs the upload once, at upload:end).",
        f"{ROUNDS} rounds each, alternating, the best shown; every upload checked by sha256.",
    )
    folder = session.new_dir("uploads")
    payload = make_payload(folder)
    try:
        with private_cache(folder / "cache"):
            pairs = with_berthd(session, payload, (DEFAULT_CHUNK, LARGE_CHUNK), "full", profile_to)
            pairs += with_berthd(session, payload, (DEFAULT_CHUNK,), "normal", None)
        steps = chunk_steps(session, payload, DEFAULT_CHUNK)
    finally:
        payload.path.unlink()
    print_table(
        ["how", "chunk bytes", "runs", "seconds", "MB/s", "of which"],
        [row.cells() for pair in pairs for row in pair],
    )
    print_comparisons(
        [
            Comparison(
                f"{uploaded.how.split(':')[0]} / disk MB/s, {uploaded.chunk_size:,}-byte chunks",
                uploaded.best().rate / disk.best().rate,
                NO_GOAL,
            )
            for disk, uploaded in pairs
        ]
    )
    print_steps(steps, DEFAULT_CHUNK, pairs[0][1].best())
