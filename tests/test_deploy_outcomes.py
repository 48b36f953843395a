"""What a deploy leaves: a failed first deploy nothing, a plain path and a Procfile repository what git
users expect, and an answer that says what runs."""

from __future__ import annotations

import time
from pathlib import Path

from tests.daemon_proc import Berthd
from tests.test_sources import PROCFILE, git, http_root, make_tar

__all__ = ["http_root"]  # the fixture, used by name


def test_a_first_deploy_that_fails_leaves_no_app(berthd: Berthd, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    make_tar(root / "noprocfile.tar.gz", {"README": b"no Procfile here\n"})
    for app, url, why in (
        ("missing", f"{base}/nothing-here.tar.gz", "404"),
        ("bare", f"{base}/noprocfile.tar.gz", "no Procfile at the root of the archive"),
    ):
        answer = berthd.call(["git:from-archive", app, url])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), answer
        assert why in answer.output and f"nothing of {app} was kept" in answer.output, answer
        assert berthd.call(f"apps:info {app}").error == "not_found"
        assert not (berthd.data_dir / "apps" / app).exists()
    assert berthd.call("apps:list").data == []


def test_a_failed_deploy_of_an_existing_app_keeps_the_app_and_says_why(
    berthd: Berthd, http_root: tuple[Path, str]
) -> None:
    root, base = http_root
    make_tar(root / "good.tar.gz", {"Procfile": PROCFILE})
    assert berthd.call(["git:from-archive", "kept", f"{base}/good.tar.gz"]).ok
    answer = berthd.call(["git:from-archive", "kept", f"{base}/gone.tar.gz"])
    assert answer.ok is False and "was kept" not in answer.output
    info = berthd.call("apps:info kept").data
    assert info["source_detail"]["status"] == "download failure"
    assert [p["state"] for p in berthd.call("ps:report kept").data if p["process"] == "web.1"] in (
        ["RUNNING"],
        ["STARTING"],
    )  # the release that was live still runs
    berthd.call("ps:stop kept")


def _repository(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    git(folder, "init", "-q", "-b", "main")
    git(folder, "add", ".")
    git(folder, "commit", "-qm", "one")
    return folder


def test_a_plain_path_is_a_repository_as_git_takes_it(berthd: Berthd, tmp_path: Path) -> None:
    repo = _repository(tmp_path / "plain", {"run.sh": "#!/bin/sh\necho plain\n"})
    (repo / "run.sh").chmod(0o755)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "x")
    answer = berthd.call(["git:sync", "plain", str(repo), "--executable", "run.sh"])
    assert answer.ok, answer.output
    assert f"from {repo} " in answer.output and "Start it with: ps:start plain" in answer.output
    ran = berthd.call("run plain")
    assert ran.ok and (Path(ran.data["output_dir"]) / "stdout.txt").read_text() == "plain\n"
    relative = berthd.call(["git:sync", "rel", "plain/repo"])
    assert relative.error == "invalid_argument" and "needs an absolute path" in relative.output


def test_a_repository_with_a_procfile_runs_by_it(berthd: Berthd, tmp_path: Path) -> None:
    repo = _repository(
        tmp_path / "procs", {"Procfile": "web: echo web up; exec sleep 1000\nworker: exec sleep 1000\n"}
    )
    answer = berthd.call(["git:sync", "procs", f"file://{repo}"])
    assert answer.ok, answer.output
    assert "Process types: web: echo web up; exec sleep 1000, worker: exec sleep 1000" in answer.output
    assert answer.data["types"] == ["web", "worker"]
    assert berthd.call("ps:start procs").ok
    deadline = time.monotonic() + 10
    while "web up" not in berthd.call("logs procs").output and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "web up" in berthd.call("logs procs").output
    assert [p["process"] for p in berthd.call("ps:report procs").data] == ["web.1"]
    again = berthd.call(["git:sync", "procs", f"file://{repo}"])
    assert again.ok and "procs is running the new code" in again.output
    berthd.call("ps:stop procs")


def test_a_repository_with_nothing_to_run_says_so(berthd: Berthd, tmp_path: Path) -> None:
    repo = _repository(tmp_path / "empty", {"README": "docs only\n"})
    answer = berthd.call(["git:sync", "docs", f"file://{repo}"])
    assert answer.ok, answer.output
    assert "Nothing will run: the repository has no Procfile and no --executable was given" in answer.output


def test_a_build_that_leaves_a_fifo_for_a_procfile_does_not_hang_berthd(
    berthd: Berthd, tmp_path: Path
) -> None:
    repo = _repository(tmp_path / "fifo", {"README": "x\n"})
    answer = berthd.call(["git:sync", "fifo", f"file://{repo}", "--build-cmd", "mkfifo Procfile"])
    assert (answer.ok, answer.error) == (False, "invalid_argument"), answer
    assert "the Procfile is not a regular file" in answer.output
    assert berthd.call("ping").output == "pong"
