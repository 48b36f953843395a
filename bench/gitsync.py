"""git:sync of a repository of 5,000 small files (500 folders three levels deep, one commit), no build,
from a file:// URL: a fresh app's first sync, and a second sync of the unchanged repository, each
against git itself run by the benchmark, in the same run.

What berthd does (daemon/sources/git.py, through GitPython): a bare clone of the URL into the app's
cache, `rev-parse`, then in a new release folder a `clone --shared --no-checkout` of the cache and a
`checkout --detach`; then the `current` link and the store. A second sync fetches into the cache
(`fetch --prune --prune-tags --tags --force`, `ls-remote --symref`) and checks out every file again
into a new release folder: a deploy never touches the live one.

The baselines:
- first sync: `git clone file://REPO`, the same transport (a file:// URL always goes through
  upload-pack and a pack, as `--no-local` does) in one step, checkout included; and berthd's own steps
  done by the git CLI, so the difference is what berthd adds (the daemon, GitPython, the store);
- second sync: `git fetch` then `git checkout --detach origin/main` in that clone (in place: nothing
  to write), and again berthd's own steps with the git CLI (a full checkout into a new folder).

The repository is made by `git fast-import` (one pack, no work tree), as a server's would be packed.
Nothing is deleted before the session ends: on some file systems creating files is slow for a while
after many were deleted, which would fall on whichever side came next.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import BenchError, ServerProcess, Session
from bench.report import NO_GOAL, Comparison, ms, print_comparisons, print_table, print_title
from berth.client import Client

FILES = 5_000
FILES_PER_FOLDER = 10
RUNS = 3  # each way, in turn; the median is compared
GIT_TIMEOUT = 60.0
SYNC_TIMEOUT = 120.0
BRANCH = "main"
COMMITTER = "bench <bench@example.com> 1700000000 +0000"
# git as berthd runs it, minus its askpass settings
GIT_ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "file"}

FIRST_BERTHD = "first: berthd git:sync (a fresh app)"
FIRST_CLONE = "first: git clone file://REPO"
FIRST_STEPS = "first: berthd's steps with the git CLI"
AGAIN_BERTHD = "again: berthd git:sync (unchanged)"
AGAIN_IN_PLACE = "again: git fetch, checkout in place"
AGAIN_STEPS = "again: berthd's steps with the git CLI"
COMPARED = (
    ("first sync: berthd / git clone file://", FIRST_BERTHD, FIRST_CLONE),
    ("first sync: berthd / its steps with the git CLI", FIRST_BERTHD, FIRST_STEPS),
    ("second sync: berthd / git fetch + checkout in place", AGAIN_BERTHD, AGAIN_IN_PLACE),
    ("second sync: berthd / its steps with the git CLI", AGAIN_BERTHD, AGAIN_STEPS),
)

Step = tuple[str, Callable[[], object]]


@dataclass
class Series:
    what: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def cells(self) -> list[str]:
        runs, low, high = str(len(self.seconds)), min(self.seconds), max(self.seconds)
        return [self.what, runs, ms(self.median), ms(low), ms(high)]


def git(*args: str, cwd: Path | None = None, stdin: bytes = b"") -> str:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=GIT_ENV,
            input=stdin,
            capture_output=True,
            check=True,
            timeout=GIT_TIMEOUT,
        )
    except subprocess.CalledProcessError as exc:
        raise BenchError(
            f"git {' '.join(args[:3])} failed: {exc.stderr.decode(errors='replace')[:300]}"
        ) from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"git {' '.join(args[:3])} took over {GIT_TIMEOUT:.0f} s") from None
    return done.stdout.decode().strip()


def file_path(index: int) -> str:
    """Ten files a folder, in 500 folders: pkg0-9/mod0-9/part0-4."""
    folder = index // FILES_PER_FOLDER
    return f"pkg{folder // 50}/mod{folder // 5 % 10}/part{folder % 5}/file{index:04d}.txt"


def make_repository(path: Path, files: int) -> str:
    """A bare repository of one commit of `files` small files; its commit."""
    git("init", "--quiet", "--bare", "--initial-branch", BRANCH, str(path))
    message = f"{files} files\n".encode()
    stream = [
        b"commit refs/heads/%s\ncommitter %s\ndata %d\n%s"
        % (BRANCH.encode(), COMMITTER.encode(), len(message), message)
    ]
    for index in range(files):
        data = f"file {index}\n{'a few words of text on a line' * 4}\n".encode()
        stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (file_path(index).encode(), len(data), data))
    git("fast-import", "--quiet", cwd=path, stdin=b"".join(stream))
    return git("rev-parse", BRANCH, cwd=path)


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def berthd_sync(berthd: ServerProcess, app: str, url: str, commit: str) -> None:
    with Client(berthd.socket, timeout=SYNC_TIMEOUT) as client:
        answer = client.call(["git:sync", app, url])
    if not answer.ok or answer.data["commit"] != commit:
        raise BenchError(f"berthd answered git:sync {app} {url} with {answer.output!r}")


def berthd_steps_first(url: str, cache: Path, release: Path) -> None:
    """berthd's first sync with the git CLI: `--no-hardlinks` as berthd passes it (no effect on file://)."""
    git("clone", "--quiet", "--bare", "--no-hardlinks", url, str(cache))
    commit = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=cache)
    git("clone", "--quiet", "--no-checkout", "--shared", str(cache), str(release))
    git("checkout", "--quiet", "--detach", commit, cwd=release)


def berthd_steps_again(cache: Path, release: Path) -> None:
    """berthd's second sync with the git CLI (it also runs `remote set-url`, and `symbolic-ref`)."""
    git("fetch", "--quiet", "--prune", "--prune-tags", "--tags", "--force", "origin",
        "+refs/heads/*:refs/heads/*", cwd=cache)  # fmt: skip
    git("ls-remote", "--symref", "origin", "HEAD", cwd=cache)
    commit = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=cache)
    git("clone", "--quiet", "--no-checkout", "--shared", str(cache), str(release))
    git("checkout", "--quiet", "--detach", commit, cwd=release)


def fetch_in_place(clone: Path) -> None:
    git("fetch", "--quiet", "origin", cwd=clone)
    git("checkout", "--quiet", "--detach", f"origin/{BRANCH}", cwd=clone)


def check_checkout(folder: Path) -> None:
    for index in (0, FILES - 1):
        if not (folder / file_path(index)).is_file():
            raise BenchError(f"{folder} has no {file_path(index)}: the checkout is incomplete")


def in_turn(steps: list[Step], turn: int) -> list[tuple[str, float]]:
    """Each step timed, starting with a different one each round."""
    start = turn % len(steps)
    return [(what, timed(step)) for what, step in steps[start:] + steps[:start]]


def one_round(
    berthd: ServerProcess, data_dir: Path, work: Path, url: str, commit: str, turn: int
) -> list[tuple[str, float]]:
    app = f"tree-{turn}"
    clone, cache = work / "clone", work / "cache.git"
    timings = in_turn(
        [
            (FIRST_BERTHD, lambda: berthd_sync(berthd, app, url, commit)),
            (FIRST_CLONE, lambda: git("clone", "--quiet", url, str(clone))),
            (FIRST_STEPS, lambda: berthd_steps_first(url, cache, work / "release-1")),
        ],
        turn,
    )
    timings += in_turn(
        [
            (AGAIN_BERTHD, lambda: berthd_sync(berthd, app, url, commit)),
            (AGAIN_IN_PLACE, lambda: fetch_in_place(clone)),
            (AGAIN_STEPS, lambda: berthd_steps_again(cache, work / "release-2")),
        ],
        turn,
    )
    for folder in (data_dir / "apps" / app / "current", clone, work / "release-1", work / "release-2"):
        check_checkout(folder)
    return timings


def run(session: Session, profile_to: Path | None = None) -> None:
    print_title(
        f"git:sync of a repository of {FILES:,} small files from a file:// URL, no build (ms)",
        "first: a fresh app's first sync (clone, checkout); again: a second sync of the unchanged "
        "repository.",
        "berthd clones bare into a cache, then checks out every file into a new release folder, on "
        "every sync;",
        "`berthd's steps with the git CLI` is that work done by git alone. A file:// clone goes "
        "through a pack, as --no-local.",
        f"berthd warmed up with a 1-file repository; then {RUNS} rounds, each way in turn, the median "
        "compared.",
    )
    folder = session.new_dir("gitsync")
    commit = make_repository(folder / "repo.git", FILES)
    warm_up_commit = make_repository(folder / "warm-up.git", 1)
    data_dir = session.new_dir("data")
    berthd = session.start_berthd(data_dir, profile_to=profile_to)
    series: dict[str, Series] = {}
    try:
        berthd.wait_ready()
        berthd_sync(
            berthd, "warm-up", f"file://{folder / 'warm-up.git'}", warm_up_commit
        )  # imports GitPython
        for turn in range(RUNS):
            work = session.new_dir("git-work")
            for what, seconds in one_round(
                berthd, data_dir, work, f"file://{folder / 'repo.git'}", commit, turn
            ):
                series.setdefault(what, Series(what)).seconds.append(seconds)
    finally:
        session.stop(berthd)
    order = [FIRST_BERTHD, FIRST_CLONE, FIRST_STEPS, AGAIN_BERTHD, AGAIN_IN_PLACE, AGAIN_STEPS]
    print_table(["what", "runs", "median", "min", "max"], [series[what].cells() for what in order])
    print_comparisons(
        [
            Comparison(what, series[berthd_side].median / series[baseline].median, NO_GOAL)
            for what, berthd_side, baseline in COMPARED
        ]
    )
