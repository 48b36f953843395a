"""dokku's words, as dokku users type them: `logs -t`/`-n`, apps:exists, apps:report, apps:rename,
ps:rebuild, and `help COMMAND` / `COMMAND --help`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from berth.client import Client
from tests.daemon_proc import Berthd
from tests.test_access import ask
from tests.test_crash_recovery import repository_of
from tests.test_native_runner import create, pid_of, report, script, wait_for
from tests.test_sources import git
from tests.users import NEEDS_ROOT, system_users

# short flags


def test_logs_takes_dokkus_n_and_t(berthd: Berthd, tmp_path: Path) -> None:
    body = "#!/bin/sh\nfor i in $(seq 10); do echo line $i; done\nsleep 2\necho after\nexec sleep 1000\n"
    writer = script(tmp_path, "talker.sh", body)
    create(berthd, "talker", writer)
    assert berthd.call("ps:start talker").ok
    wait_for(lambda: "line 10" in berthd.call("logs talker").output)
    answer = berthd.call("logs talker -n 5")
    assert answer.ok, answer.output
    assert [line["text"] for line in answer.data] == [f"line {i}" for i in range(6, 11)]
    with Client(berthd.socket, timeout=30) as client:
        stream = client.stream(["logs", "talker", "-t", "-n", "1"])
        followed = [message["line"] for message in (next(stream), next(stream))]  # type: ignore[index]
    assert followed == ["line 10", "after"]
    berthd.call("ps:stop talker")


def test_unknown_short_flags_are_refused_with_the_usage(berthd: Berthd) -> None:
    answer = berthd.call("logs talker -x")
    assert not answer.ok and answer.error == "invalid_argument"
    assert "unknown option -x" in answer.output
    assert "Usage: logs APP [--num N | -n N] [--tail | -t]" in answer.output
    answer = berthd.call("apps:create -t")
    assert answer.error == "invalid_argument" and "unknown option -t" in answer.output
    assert berthd.call("apps:list").output == ""


# apps:exists, apps:report


def test_apps_exists_both_ways(berthd: Berthd) -> None:
    missing = berthd.call("apps:exists nothere")
    assert not missing.ok and missing.error == "not_found"
    assert missing.output == "App nothere does not exist"
    assert berthd.call("apps:create there").ok
    found = berthd.call("apps:exists there")
    assert found.ok and found.output == "App there exists"


def test_apps_report_shows_dokkus_fields(berthd: Berthd, tmp_path: Path) -> None:
    create(berthd, "reported", script(tmp_path, "app.sh", "#!/bin/sh\nexec sleep 1000\n"))
    answer = berthd.call("apps:report reported")
    assert answer.ok, answer.output
    lines = answer.output.splitlines()
    assert lines[0] == "=====> reported app information"
    fields = dict(line.strip().split(":", 1) for line in lines[1:])
    assert fields["App dir"].strip() == str(berthd.data_dir / "apps" / "reported")
    assert fields["App deploy source"].strip() == "local"
    assert fields["App locked"].strip() == "false"
    assert "App created at" in fields
    data = answer.data
    assert data["app-dir"] == str(berthd.data_dir / "apps" / "reported")
    assert data["app-deploy-source"] == "local"
    assert data["app-deploy-source-metadata"] == str(tmp_path / "app.sh")
    assert isinstance(data["app-created-at"], int)
    assert data["app-runner"] == "native"
    assert berthd.call("apps:report nothere").error == "not_found"


# apps:rename


APP_BUILD = (
    'printf \'#!/bin/sh\\necho "greeting=$GREETING"\\n[ "$1" = once ] || exec sleep 1000\\n\' > app\n'
    "chmod +x app\n"
)


def build_repository(tmp_path: Path, counter: Path) -> Path:
    """A repository whose build counts its runs in `counter` and writes an executable printing its env."""
    return repository_of(tmp_path / "repo", {"build.sh": f"echo x >> {counter}\n{APP_BUILD}"})


def test_rename_moves_a_running_app_with_everything_it_has(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    berthd = start_berthd()
    counter = tmp_path / "builds"
    repo = build_repository(tmp_path, counter)
    synced = berthd.call(
        ["git:sync", "before", f"file://{repo}", "--build-cmd", "sh build.sh", "--executable", "app"]
    )
    assert synced.ok, synced.output
    assert berthd.call("config:set before GREETING=hi").ok
    assert berthd.call("ps:start before").ok
    wait_for(lambda: "greeting=hi" in berthd.call("logs before").output)
    old_pid = pid_of(berthd, "before")
    ran = berthd.call("run before --timeout 5 -- once")
    assert ran.ok, ran.output
    old_dir = berthd.data_dir / "apps" / "before"
    assert ran.data["output_dir"].startswith(str(old_dir) + "/")

    answer = berthd.call("apps:rename before after")
    assert answer.ok, answer.output
    assert answer.output.startswith("Renaming before to after... done")

    new_dir = berthd.data_dir / "apps" / "after"
    assert not old_dir.exists() and new_dir.is_dir()
    assert berthd.call("apps:exists before").error == "not_found"
    assert berthd.call("ps:report before").error == "not_found"
    assert [r["name"] for r in berthd.call("apps:list").data] == ["after"]
    assert berthd.call("config:get after GREETING").output == "hi"
    rows = report(berthd, "after")
    assert [(r["app"], r["process"]) for r in rows] == [("after", "main.1")]
    wait_for(lambda: report(berthd, "after")[0]["state"] == "RUNNING")
    assert pid_of(berthd, "after") != old_pid
    logged = [line["text"] for line in berthd.call("logs after").data]
    assert logged.count("greeting=hi") == 2  # the history from before, and the restart
    info = berthd.call("apps:info after").data
    assert info["settings"]["executable"] == str(new_dir / "current" / "app")
    assert info["source_detail"]["source_dir"] == str(new_dir / "current")
    jobs = berthd.call("jobs:list after").data
    assert [j["job_id"] for j in jobs] == [ran.data["job_id"]]
    assert jobs[0]["output_dir"].startswith(str(new_dir) + "/")
    assert Path(jobs[0]["output_dir"], "stdout.txt").read_text() == "greeting=hi\n"
    assert berthd.call("jobs:list before").error == "not_found"
    with sqlite3.connect(berthd.data_dir / "berthd.db") as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            if "app" in columns:
                assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE app = 'before'").fetchone() == (0,)
            text = repr(db.execute(f"SELECT * FROM {table}").fetchall())
            assert str(old_dir) not in text, table

    berthd.stop()
    again = start_berthd()
    assert again.data_dir == berthd.data_dir
    wait_for(lambda: report(again, "after") and report(again, "after")[0]["state"] == "RUNNING")
    assert new_dir.is_dir() and not old_dir.exists()
    assert again.call("config:get after GREETING").output == "hi"
    again.call("ps:stop after")


def test_rename_onto_an_existing_app_is_refused(berthd: Berthd) -> None:
    assert berthd.call("apps:create one").ok
    assert berthd.call("apps:create two").ok
    answer = berthd.call("apps:rename one two")
    assert not answer.ok and answer.error == "conflict"
    assert answer.output == "App two already exists"
    assert berthd.call("apps:rename nothere three").error == "not_found"
    assert berthd.call("apps:rename one one").error == "conflict"
    assert sorted(r["name"] for r in berthd.call("apps:list").data) == ["one", "two"]


# ps:rebuild


def test_rebuild_reruns_the_build_of_a_git_app_on_its_commit(berthd: Berthd, tmp_path: Path) -> None:
    counter = tmp_path / "builds"
    repo = build_repository(tmp_path, counter)
    synced = berthd.call(
        ["git:sync", "built", f"file://{repo}", "--build-cmd", "sh build.sh", "--executable", "app"]
    )
    assert synced.ok, synced.output
    commit = synced.data["commit"]
    assert counter.read_text() == "x\n"
    (repo / "build.sh").write_text("exit 1\n")  # a new commit the rebuild must not take
    git(repo, "commit", "-qam", "two")
    assert berthd.call("ps:start built").ok
    old_pid = pid_of(berthd, "built")
    answer = berthd.call("ps:rebuild built")
    assert answer.ok, answer.output
    assert counter.read_text() == "x\nx\n"
    assert berthd.call("apps:info built").data["source_detail"]["commit"] == commit
    wait_for(lambda: report(berthd, "built")[0]["state"] == "RUNNING")
    assert pid_of(berthd, "built") != old_pid
    assert berthd.call("ps:rebuild nothere").error == "not_found"
    assert berthd.call("apps:create empty").ok
    empty = berthd.call("ps:rebuild empty")
    assert empty.error == "invalid_argument" and "nothing to rebuild" in empty.output
    berthd.call("ps:stop built")


# help


def test_help_of_one_command_describes_each_option(berthd: Berthd) -> None:
    answer = berthd.call("help apps:create")
    assert answer.ok, answer.output
    assert answer.output.splitlines()[0] == "Usage: apps:create APP"
    assert "lowercase letters, digits and dashes" in answer.output
    assert berthd.call("apps:create --help").output == answer.output
    assert berthd.call("apps:list").output == ""  # --help made nothing
    logs = berthd.call("logs --help").output
    assert "  --num N, -n N" in logs and "  --tail, -t" in logs
    sync = berthd.call("help git:sync").output
    for option in ("--build-cmd CMD", "--executable PATH", "--env KEY=VALUE", "--timeout SECONDS"):
        line = next(line for line in sync.splitlines() if line.strip().startswith(option))
        assert len(line.strip()) > len(option) + 5, line  # described
    assert berthd.call("help no:such").error == "invalid_argument"


def test_help_lines_wrap_and_are_never_padded_wide(berthd: Berthd) -> None:
    names = berthd.call("commands").data
    for command in ["help", "apps:help", "git:sync --help", *(f"help {name}" for name in names)]:
        answer = berthd.call(command)
        assert answer.ok, answer.output
        widest = max(answer.output.splitlines(), key=len)
        assert len(widest) <= 120, widest
    lines = berthd.call("help").output.splitlines()
    ping = next(line for line in lines if line.strip().startswith("ping"))
    assert len(ping) < 60, ping


@NEEDS_ROOT
def test_rename_under_rules_needs_both_names_allowed(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, tmp_path: Path
) -> None:
    with system_users("dokren") as (alice,):
        config = tmp_path / "berthd.toml"
        config.write_text(
            f'[[access.rule]]\nusers = ["{alice.name}"]\ncommands = ["apps:*"]\napps = ["{{user}}-*"]\n'
        )
        config.chmod(0o644)
        daemon = start_berthd(
            root=reachable_tmp, extra_args=["--config", str(config), "--socket-mode", "0666"]
        )
        assert daemon.call("apps:create other").ok  # root's
        mine, onto_other, onto_stranger, hidden, missing = ask(
            daemon,
            alice,
            f"apps:create {alice.name}-a",
            f"apps:rename {alice.name}-a other",
            f"apps:rename {alice.name}-a stranger",
            f"apps:rename other {alice.name}-b",
            f"apps:rename nosuch {alice.name}-b",
        )
        assert mine["ok"], mine
        assert onto_other["error"] == "forbidden" and "other" in onto_other["output"], onto_other
        assert onto_stranger["error"] == "forbidden", onto_stranger
        assert {k: v for k, v in onto_other.items() if k != "output"} == {
            k: v for k, v in onto_stranger.items() if k != "output"
        }
        assert onto_other["output"].replace("other", "X") == onto_stranger["output"].replace("stranger", "X")
        assert hidden == {**missing, "output": missing["output"].replace("nosuch", "other")}, (
            hidden,
            missing,
        )
        assert hidden["error"] == "not_found"
        (renamed,) = ask(daemon, alice, f"apps:rename {alice.name}-a {alice.name}-b")
        assert renamed["ok"], renamed
        assert sorted(r["name"] for r in daemon.call("apps:list").data) == [f"{alice.name}-b", "other"]


def test_a_rename_cut_short_before_its_folder_moved_is_finished_at_the_next_start(
    start_berthd: Callable[..., Berthd], tmp_path: Path
) -> None:
    berthd = start_berthd()
    create(berthd, "halfway", script(tmp_path, "app.sh", "#!/bin/sh\nexec sleep 1000\n"))
    (berthd.data_dir / "apps" / "halfway" / "kept.txt").parent.mkdir(parents=True, exist_ok=True)
    (berthd.data_dir / "apps" / "halfway" / "kept.txt").write_text("mine\n")
    assert berthd.call("apps:rename halfway moved").ok
    berthd.stop()
    # as if berthd died between the store's commit and the folder's rename(2)
    (berthd.data_dir / "apps" / "moved").rename(berthd.data_dir / "apps" / "halfway")
    with sqlite3.connect(berthd.data_dir / "berthd.db") as db:
        db.execute(
            "UPDATE apps SET source = json_set(CAST(source AS TEXT), '$.detail.renamed_from', 'halfway')"
            " WHERE name = 'moved'"
        )
    again = start_berthd()
    assert (again.data_dir / "apps" / "moved" / "kept.txt").read_text() == "mine\n"
    assert not (again.data_dir / "apps" / "halfway").exists()
    assert "renamed_from" not in again.call("apps:info moved").data["source_detail"]
