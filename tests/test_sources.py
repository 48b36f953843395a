"""Sources against real parts: chunked uploads, git repositories made by the test, archives over HTTP."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import io
import json
import os
import random
import re
import stat
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.client import Client, CommandFailed
from berth.upload import upload_file
from tests.daemon_proc import Berthd
from tests.test_native_runner import pid_of, report, wait_for

# uploads


def big_script(tmp_path: Path, size: int = 3 * 1024 * 1024) -> Path:
    """A multi-megabyte executable: a shell script followed by random bytes it never reaches."""
    path = tmp_path / "big-app"
    payload = random.Random(1).randbytes(size)
    path.write_bytes(b"#!/bin/sh\necho big app says hi\nexit 0\n" + payload)
    path.chmod(0o755)
    return path


def chunks_of(data: bytes, count: int) -> list[bytes]:
    size = -(-len(data) // count)
    return [data[i * size : (i + 1) * size] for i in range(count)]


def test_upload_in_shuffled_chunks_with_a_duplicate_then_run(berthd: Berthd, tmp_path: Path) -> None:
    data = big_script(tmp_path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    pieces = chunks_of(data, 7)
    with Client(berthd.socket) as client:
        begin = client.call(
            ["upload:begin", "big", "big-app", str(len(data)), "7", "--sha256", digest], check=True
        )
        session = begin.data["session_id"]
        order = list(range(7)) + [3]
        random.Random(2).shuffle(order)
        for index in order:
            client.call(
                ["upload:chunk", session, str(index), base64.b64encode(pieces[index]).decode()], check=True
            )
        assert client.call(["upload:status", session]).data["missing"] == []
        end = client.call(["upload:end", session], check=True)
    executable = Path(end.data["executable"])
    assert end.data["upload_hash"] == digest
    assert stat.S_IMODE(executable.stat().st_mode) == 0o755
    assert executable.read_bytes() == data
    assert executable.is_relative_to(berthd.data_dir / "apps" / "big")
    run = berthd.call("run big")
    assert run.ok, run.output
    assert (Path(run.data["output_dir"]) / "stdout.txt").read_text() == "big app says hi\n"
    assert berthd.call("apps:info big").data["source_detail"]["upload_hash"] == digest
    chunk_lines = [line for line in berthd.log().splitlines() if 'cmd="upload:chunk ' in line]
    assert len(chunk_lines) == 8
    assert all(re.search(r'cmd="upload:chunk up-\S+ \d+ \*\*\*"', line) for line in chunk_lines)
    assert base64.b64encode(pieces[0][:30]).decode()[:20] not in berthd.log()


def test_an_upload_resumes_across_a_restart(berthd: Berthd, tmp_path: Path) -> None:
    data = big_script(tmp_path, 200_000).read_bytes()
    pieces = chunks_of(data, 4)
    begin = berthd.call(["upload:begin", "resumed", "app", str(len(data)), "4"])
    session = begin.data["session_id"]
    for index in (0, 2):
        assert berthd.call(["upload:chunk", session, str(index), base64.b64encode(pieces[index]).decode()]).ok
    berthd.stop()
    berthd.start()
    status = berthd.call(["upload:status", session])
    assert (status.data["received"], status.data["missing"]) == ([0, 2], [1, 3])
    for index in (1, 3):
        assert berthd.call(["upload:chunk", session, str(index), base64.b64encode(pieces[index]).decode()]).ok
    assert berthd.call(["upload:end", session]).ok
    assert berthd.call("run resumed").ok


def test_a_sha256_mismatch_is_refused_and_leaves_nothing(berthd: Berthd, tmp_path: Path) -> None:
    data = big_script(tmp_path, 10_000).read_bytes()
    session = berthd.call(["upload:begin", "wrong", "app", str(len(data)), "1", "--sha256", "0" * 64]).data[
        "session_id"
    ]
    assert berthd.call(["upload:chunk", session, "0", base64.b64encode(data).decode()]).ok
    answer = berthd.call(["upload:end", session])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert "sha256" in answer.output
    assert berthd.call("apps:list").data == []
    assert list((berthd.data_dir / "uploads").iterdir()) == []
    assert not (berthd.data_dir / "apps" / "wrong").exists()
    assert berthd.call(["upload:status", session]).error == "not_found"


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "x\x00y", "/etc/passwd"])
def test_upload_filenames_must_be_plain(berthd: Berthd, name: str) -> None:
    answer = berthd.call(["upload:begin", "files", name, "10", "1"])
    assert (answer.ok, answer.error) == (False, "invalid_argument"), name
    assert "invalid filename" in answer.output
    assert not (berthd.data_dir / "uploads").exists() or list((berthd.data_dir / "uploads").iterdir()) == []


def test_bad_chunks_are_refused(berthd: Berthd) -> None:
    session = berthd.call(["upload:begin", "chunky", "app", "10", "2", "--chunk-size", "5"]).data[
        "session_id"
    ]
    cases = [
        (["2", base64.b64encode(b"12345").decode()], "out of range"),
        (["0", "not base64!"], "not valid base64"),
        (["0", base64.b64encode(b"123456").decode()], "chunk 0 has 6 bytes, expected 5"),
        (
            ["1", base64.b64encode(b"1234").decode()],
            "chunk 1 has 4 bytes, expected 5 (the last chunk holds the rest)",
        ),
        (["-1", base64.b64encode(b"12345").decode()], "chunk index"),
    ]
    for args, message in cases:
        answer = berthd.call(["upload:chunk", session, *args])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), args
        assert message in answer.output, (args, answer.output)
    assert berthd.call(["upload:chunk", "up-nonexistent00000", "0", "AAAA"]).error == "not_found"
    assert "incomplete" in berthd.call(["upload:end", session]).output
    assert berthd.call(["upload:abort", session]).ok
    assert list((berthd.data_dir / "uploads").iterdir()) == []


def test_unfinished_uploads_expire(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--upload-ttl", "1"])
    session = daemon.call(["upload:begin", "late", "app", "10", "1"]).data["session_id"]
    wait_for(lambda: daemon.call(["upload:status", session]).error == "not_found", timeout=10)
    assert list((daemon.data_dir / "uploads").iterdir()) == []


def interrupt_upload(socket: Path, app: str, path: Path, options: list[str], chunk_size: int) -> None:
    """`upload_file` stopped (as by Ctrl-C) once two chunks are confirmed."""
    sent: list[int] = []

    def interrupt_after_two(done: int, total: int) -> None:
        sent.append(done)
        if len(sent) == 3:
            raise KeyboardInterrupt

    with Client(socket) as client, pytest.raises(KeyboardInterrupt):
        upload_file(client, app, path, options, chunk_size, interrupt_after_two)


def test_berth_upload_resumes_an_interrupted_upload(berthd: Berthd, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = big_script(tmp_path, 300_000)
    interrupt_upload(berthd.socket, "cli-upload", path, ["--description", "from berth"], 50_000)
    chunks: list[int] = []
    with Client(berthd.socket) as client:
        result = upload_file(client, "cli-upload", path, [], 50_000, lambda done, total: chunks.append(done))
    # two were confirmed, and what was in flight when the client stopped was stored too: the second
    # run starts from what berthd has and sends only what is missing, one progress step each
    assert chunks[0] >= 2
    total = -(-path.stat().st_size // 50_000)
    assert chunks == list(range(chunks[0], total + 1))
    assert result["size"] == path.stat().st_size
    assert berthd.call("apps:info cli-upload").data["settings"]["description"] == "from berth"
    assert berthd.call("run cli-upload").ok


# git


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository whose build writes an executable printing the VERSION file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "build.sh").write_text(
        "#!/bin/sh\necho building\nprintf '#!/bin/sh\\necho version %s\\nsleep 1000\\n' \"$(cat VERSION)\" > out/app\n"
        "chmod +x out/app\n"
    )
    (repo / "out").mkdir()
    (repo / "out" / ".keep").write_text("")
    (repo / "VERSION").write_text("1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "v1")
    git(repo, "tag", "v1")
    (repo / "VERSION").write_text("2\n")
    git(repo, "commit", "-qam", "v2")
    git(repo, "branch", "stable", "v1")
    return repo


def sync(daemon: Berthd, repo: Path, *args: str) -> object:
    return daemon.call(
        ["git:sync", "gapp", f"file://{repo}", *args, "--build-cmd", "sh build.sh", "--executable", "out/app"]
    )


def version_of(daemon: Berthd) -> str:
    answer = daemon.call("run gapp --timeout 2")
    return (Path(answer.data["output_dir"]) / "stdout.txt").read_text().strip()


def test_git_sync_at_a_branch_a_tag_and_a_commit(berthd: Berthd, repository: Path) -> None:
    answer = sync(berthd, repository)
    assert answer.ok, answer.output  # type: ignore[attr-defined]
    assert version_of(berthd) == "version 2"
    head = git(repository, "rev-parse", "HEAD")
    assert berthd.call("apps:info gapp").data["source_detail"]["commit"] == head
    assert head[:12] in berthd.call("apps:info gapp").output
    assert sync(berthd, repository, "stable").ok  # type: ignore[attr-defined]
    assert version_of(berthd) == "version 1"
    assert sync(berthd, repository, "v1").data["ref_kind"] == "tag"  # type: ignore[attr-defined]
    first = git(repository, "rev-list", "--max-parents=0", "HEAD")
    answer = sync(berthd, repository, first)
    assert answer.data["commit"] == first and answer.data["ref_kind"] == "commit"  # type: ignore[attr-defined]
    assert version_of(berthd) == "version 1"
    build_logs = list((berthd.data_dir / "apps" / "gapp" / "builds").glob("*/logs.txt"))
    assert build_logs and "building" in build_logs[0].read_text()


def test_old_releases_are_pruned_to_the_live_one_and_the_one_before(berthd: Berthd, repository: Path) -> None:
    releases = []
    for ref in ("main", "stable", "v1", "main"):
        answer = sync(berthd, repository, ref)
        assert answer.ok, answer.output  # type: ignore[attr-defined]
        releases.append(berthd.call("apps:info gapp").data["source_detail"]["release"])
    app_dir = berthd.data_dir / "apps" / "gapp"
    assert sorted(p.name for p in (app_dir / "releases").iterdir()) == sorted(releases[-2:])
    assert (app_dir / "current").resolve().name == releases[-1]
    assert version_of(berthd) == "version 2"


def test_a_second_sync_picks_up_a_new_commit_and_restarts(berthd: Berthd, repository: Path) -> None:
    assert sync(berthd, repository).ok  # type: ignore[attr-defined]
    berthd.call("ps:start gapp")
    old_pid = pid_of(berthd, "gapp")
    (repository / "VERSION").write_text("3\n")
    git(repository, "commit", "-qam", "v3")
    assert sync(berthd, repository).ok  # type: ignore[attr-defined]
    wait_for(lambda: report(berthd, "gapp") and report(berthd, "gapp")[0]["state"] == "RUNNING")
    assert pid_of(berthd, "gapp") != old_pid
    wait_for(lambda: "version 3" in berthd.call("logs gapp").output)
    berthd.call("ps:stop gapp")


def test_a_failing_build_leaves_the_old_version_running(berthd: Berthd, repository: Path) -> None:
    assert sync(berthd, repository).ok  # type: ignore[attr-defined]
    berthd.call("ps:start gapp")
    pid = pid_of(berthd, "gapp")
    commit = berthd.call("apps:info gapp").data["source_detail"]["commit"]
    (repository / "build.sh").write_text("#!/bin/sh\necho about to fail\nexit 3\n")
    (repository / "VERSION").write_text("broken\n")
    git(repository, "commit", "-qam", "broken build")
    answer = sync(berthd, repository)
    assert answer.ok is False  # type: ignore[attr-defined]
    assert "build failed" in answer.output  # type: ignore[attr-defined]
    assert pid_of(berthd, "gapp") == pid
    info = berthd.call("apps:info gapp").data
    assert info["source_detail"]["commit"] == commit
    assert info["source_detail"]["status"] == "build failure"
    assert version_of(berthd) == "version 2"
    berthd.call("ps:stop gapp")


def test_git_bad_input(berthd: Berthd, repository: Path, tmp_path: Path) -> None:
    missing = berthd.call(["git:sync", "gbad", f"file://{tmp_path}/does-not-exist"])
    assert (missing.ok, missing.error) == (False, "invalid_argument")
    assert "failed to clone repository" in missing.output
    escape = berthd.call(["git:sync", "gbad2", f"file://{repository}", "--executable", "../../bin/sh"])
    assert escape.ok is False and "leaves the checkout" in escape.output
    for url in ["ext::sh -c touch% /tmp/pwned", "-u/tmp/x", "ftp://example.com/x.git", "/tmp/plain-path"]:
        answer = berthd.call(["git:sync", "gbad3", url])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), url
    assert (
        berthd.call(["git:sync", "gbad4", f"file://{repository}", "--output=/tmp/x"]).error
        == "invalid_argument"
    )
    assert berthd.call(["git:sync", "gbad5", f"file://{repository}", "no-such-branch"]).ok is False


def test_git_credentials_are_used_and_never_kept(berthd: Berthd, repository: Path) -> None:
    answer = berthd.call(
        ["git:sync", "creds", f"file://{repository}", "--username", "alice", "--password", "s3cret-pw",
         "--build-cmd", "sh build.sh", "--executable", "out/app"]
    )  # fmt: skip
    assert answer.ok, answer.output
    assert "s3cret-pw" not in berthd.log()
    assert "s3cret-pw" not in (berthd.workdir / "berthd.stderr").read_text()
    db = (berthd.data_dir / "berthd.db").read_bytes() + (berthd.data_dir / "berthd.db-wal").read_bytes()
    assert b"s3cret-pw" not in db
    assert "s3cret-pw" not in berthd.call("apps:info creds").output


# archives


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def make_tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)


PROCFILE = (
    b"# two types\n"
    b'web: GREETING="hello web" sh -c \'echo "web $GREETING $PORT_HINT cwd=$(pwd)"; exec sleep 1000\'\n'
    b"worker: sh -c 'echo \"worker $BERTH_PROCESS $SHARED cwd=$(pwd)\"; exec sleep 1000'\n"
)


class GuardedHandler(QuietHandler):
    """Serves its folder to alice (password "p@ss:w0rd") only, and records the Authorization of each
    request; `/moved/NAME` redirects to the same file on another server."""

    seen: list[tuple[str, str]]
    elsewhere: str = ""

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path.startswith("/moved/") and self.elsewhere:
            self.send_response(302)
            self.send_header("Location", f"{self.elsewhere}/{self.path.removeprefix('/moved/')}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        wanted = "Basic " + base64.b64encode(b"alice:p@ss:w0rd").decode()
        if self.headers.get("Authorization") != wanted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="archives"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


def serve(root: Path, seen: list[tuple[str, str]], elsewhere: str = "") -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (GuardedHandler,), {"seen": seen, "elsewhere": elsewhere})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_archive_url_credentials_are_sent_as_basic_auth_and_never_to_another_host(
    berthd: Berthd, tmp_path: Path
) -> None:
    root = tmp_path / "private"
    root.mkdir()
    make_tar(root / "app.tar.gz", {"Procfile": b"web: sleep 1000\n"})
    seen: list[tuple[str, str]] = []
    other_seen: list[tuple[str, str]] = []
    private = serve(root, seen)
    other = serve(root, other_seen)
    host, other_host = (f"127.0.0.1:{s.server_address[1]}" for s in (private, other))
    redirecting = serve(root, seen, elsewhere=f"http://{other_host}")
    try:
        answer = berthd.call(["git:from-archive", "guarded", f"http://alice:p%40ss%3Aw0rd@{host}/app.tar.gz"])
        assert answer.ok, answer.output
        assert seen and all(auth.startswith("Basic ") for _, auth in seen), seen
        berthd.call("ps:stop guarded")
        # a redirect to another host: the password is not sent there, and the download fails
        moved = f"http://alice:p%40ss%3Aw0rd@127.0.0.1:{redirecting.server_address[1]}/moved/app.tar.gz"
        answer = berthd.call(["git:from-archive", "guarded", moved])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), answer.output
        assert other_seen and not any(auth for _, auth in other_seen), other_seen
        for text in (berthd.log(), json.dumps([answer.output, answer.data])):
            assert "p@ss" not in text and "p%40ss" not in text and "w0rd" not in text
    finally:
        for server in (private, other, redirecting):
            server.shutdown()
            server.server_close()


def test_archive_with_a_procfile_of_two_types_scaled(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    make_tar(root / "app.tar.gz", {"app-1.0/Procfile": PROCFILE, "app-1.0/README": b"hi\n"})
    berthd.call("apps:create twelve")
    berthd.call(["config:set", "twelve", "SHARED=from-config", "PORT_HINT=8000"])
    events: list[dict[str, object]] = []
    with Client(berthd.socket) as client:
        answer = client.call(["git:from-archive", "twelve", f"{base}/app.tar.gz"], on_event=events.append)
    assert answer.ok, answer.output
    assert {e.get("stage") for e in events} >= {"downloading", "unpacking"}
    assert berthd.call("ps:scale twelve web=2 worker=1").ok
    wait_for(lambda: [r["state"] for r in report(berthd, "twelve")] == ["RUNNING"] * 3)
    assert [r["process"] for r in report(berthd, "twelve")] == ["web.1", "web.2", "worker.1"]
    source_dir = berthd.data_dir / "apps" / "twelve" / "current" / "app-1.0"

    def lines() -> list[str]:
        return [
            line["text"] for line in berthd.call("logs twelve --num 100").data if line["stream"] == "stdout"
        ]

    wait_for(lambda: len(lines()) >= 3)
    for expected in (
        f"web hello web 8000 cwd={source_dir.resolve()}",
        f"worker worker.1 from-config cwd={source_dir.resolve()}",
    ):
        assert any(
            line.replace(str(source_dir), str(source_dir.resolve())) == expected for line in lines()
        ), lines()
    info = berthd.call("apps:info twelve").data
    assert info["source_detail"]["status"] == "running"
    berthd.call("ps:stop twelve")


@pytest.mark.parametrize(
    ("files", "links", "message"),
    [
        ({"../../evil": b"x", "Procfile": PROCFILE}, None, "leaves the archive's folder"),
        ({"/tmp/evil-absolute": b"x", "Procfile": PROCFILE}, None, "absolute path"),
        ({"Procfile": PROCFILE}, {"etc": "/etc"}, "absolute path '/etc'"),
        ({"Procfile": PROCFILE}, {"up": "../../.."}, "points outside"),
        ({"README": b"no procfile here"}, None, "no Procfile"),
        ({"Procfile": b"web: ok\n\xff\xfe\n"}, None, "not valid UTF-8"),
        ({"Procfile": b"web echo no colon\n"}, None, "no colon"),
        ({"Procfile": b"web: a\nworker: b\nweb: c\n"}, None, "already defined on line 1"),
    ],
)
def test_bad_archives_are_refused_and_write_nothing_outside(
    berthd: Berthd,
    http_root: tuple[Path, str],
    files: dict[str, bytes],
    links: dict[str, str] | None,
    message: str,
) -> None:
    root, base = http_root
    make_tar(root / "bad.tar.gz", files, links)
    answer = berthd.call(["git:from-archive", "badarc", f"{base}/bad.tar.gz"])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert message in answer.output, answer.output
    assert not (berthd.data_dir / "evil").exists() and not Path("/tmp/evil-absolute").exists()
    assert "nothing of badarc was kept" in answer.output
    assert not (berthd.data_dir / "apps" / "badarc").exists()  # a first deploy that failed: no app
    assert berthd.call("apps:info badarc").error == "not_found"


def test_a_zip_bomb_over_the_limit_is_refused(
    start_berthd: Callable[..., Berthd], http_root: tuple[Path, str]
) -> None:
    daemon = start_berthd(extra_args=["--max-unpacked-bytes", "1000000"])
    root, base = http_root
    with zipfile.ZipFile(root / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("Procfile", PROCFILE)
        bomb.writestr("zeros", b"\0" * 50_000_000)
    assert (root / "bomb.zip").stat().st_size < 200_000
    answer = daemon.call(["git:from-archive", "bomb", f"{base}/bomb.zip"])
    assert answer.ok is False and "more than 1000000 bytes" in answer.output
    assert not (daemon.data_dir / "apps" / "bomb").exists()


def test_a_zip_archive_deploys(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    with zipfile.ZipFile(root / "app.zip", "w") as zipped:
        zipped.writestr("Procfile", b"web: exec sleep 1000\n")
    assert berthd.call(["git:from-archive", "zipped", f"{base}/app.zip"]).ok
    wait_for(lambda: report(berthd, "zipped")[0]["state"] == "RUNNING")
    berthd.call("ps:stop zipped")


def test_archive_download_failures(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    _, base = http_root
    missing = berthd.call(["git:from-archive", "dl", f"{base}/missing.tar.gz"])
    assert missing.ok is False and "HTTP 404" in missing.output
    assert berthd.call("apps:info dl").error == "not_found"  # a first deploy that failed leaves no app
    assert berthd.call(["git:from-archive", "dl", "ftp://example.com/a.tar.gz"]).error == "invalid_argument"
    assert berthd.call(["git:from-archive", "dl", f"{base}/page.html"]).error == "invalid_argument"


def test_berthd_survives_a_slow_source_and_keeps_serving(berthd: Berthd, repository: Path) -> None:
    done = threading.Event()

    def slow_build() -> None:
        berthd.call(["git:sync", "slowapp", f"file://{repository}", "--build-cmd", "sleep 2"])
        done.set()

    thread = threading.Thread(target=slow_build)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert berthd.call("apps:create meanwhile").ok  # the build does not hold the lock
    assert time.monotonic() - started < 1.0
    thread.join(30)
    assert done.is_set()


def test_a_failed_build_is_not_half_created(berthd: Berthd, repository: Path) -> None:
    with pytest.raises(CommandFailed), Client(berthd.socket) as client:
        client.call(["git:sync", "half", f"file://{repository}", "--build-cmd", "exit 1"], check=True)
    assert berthd.call("apps:info half").error == "not_found"  # its first deploy: nothing stays
    assert not (berthd.data_dir / "apps" / "half").exists()
    assert berthd.call(["git:sync", "half", f"file://{repository}"]).ok
    with pytest.raises(CommandFailed), Client(berthd.socket) as client:
        client.call(["git:sync", "half", f"file://{repository}", "--build-cmd", "exit 1"], check=True)
    info = berthd.call("apps:info half").data  # a later one: the app stays as it was, with why
    assert info["source_detail"]["status"] == "build failure"


def test_credentials_in_urls_env_values_and_stdin_are_never_logged(berthd: Berthd, repository: Path) -> None:
    berthd.call(["apps:from-local", "envy", "/bin/cat", "--env", "API_TOKEN=tok-s3cret-1"])
    berthd.call(["run", "envy", "--stdin", "stdin-s3cret-2"])
    answer = berthd.call(["git:sync", "urly", "https://alice:url-s3cret-3@127.0.0.1:9/repo.git"])
    assert answer.ok is False
    berthd.call(["git:from-archive", "arch", "http://bob:url-s3cret-4@127.0.0.1:9/a.tar.gz"])
    log = berthd.log() + (berthd.workdir / "berthd.stderr").read_text()
    for secret in ("tok-s3cret-1", "stdin-s3cret-2", "url-s3cret-3", "url-s3cret-4"):
        assert secret not in log, secret
    assert "API_TOKEN=***" in log
    assert "https://***@127.0.0.1:9/repo.git" in log
    assert "url-s3cret-4" not in str(berthd.call("apps:info arch").data)
