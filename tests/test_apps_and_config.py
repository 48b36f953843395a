"""apps:* and config:* as a user sees them."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.daemon_proc import Berthd


def test_create_list_info_destroy(berthd: Berthd) -> None:
    assert berthd.call("apps:create python-app").output == "Creating python-app... done"
    again = berthd.call("apps:create python-app")
    assert (again.ok, again.error) == (False, "conflict")
    assert "already exists" in again.output
    berthd.call("apps:create another")
    listing = berthd.call("apps:list")
    assert listing.output == "another\npython-app"
    assert [a["name"] for a in listing.data] == ["another", "python-app"]
    info = berthd.call("apps:info python-app")
    assert info.ok and info.data["name"] == "python-app"
    assert info.data["source"] == "none" and info.data["processes"] == []
    assert "=====> python-app" in info.output
    assert berthd.call("apps:destroy python-app --force").ok
    missing = berthd.call("apps:info python-app")
    assert (missing.ok, missing.error) == (False, "not_found")
    assert berthd.call("apps:destroy python-app --force").error == "not_found"


def test_app_names_are_checked(berthd: Berthd) -> None:
    for bad in ["Upper", "1starts-with-digit", "under_score", "a" * 64, "dot.ted", "-dash"]:
        answer = berthd.call(["apps:create", bad])
        assert answer.error == "invalid_argument", bad
        assert "lowercase letters, digits and dashes" in answer.output
    assert berthd.call(["apps:create", "a" * 63]).ok


def test_destroy_removes_the_apps_files(berthd: Berthd) -> None:
    berthd.call("apps:create files")
    folder = berthd.data_dir / "apps" / "files"
    folder.mkdir(parents=True)
    (folder / "artifact").write_text("x")
    assert berthd.call("apps:destroy files --force").ok
    assert not folder.exists()


def test_files_of_an_app_destroyed_by_a_crash_are_swept_at_start(berthd: Berthd) -> None:
    orphan = berthd.data_dir / "apps" / "orphan"
    orphan.mkdir(parents=True)
    berthd.stop()
    berthd.start()
    assert not orphan.exists()


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("description", "Python data processor", "Python data processor"),
        ("timeout", "30", 30),
        ("restart-policy", "on-failure:3", "on-failure:3"),
        ("args", "-u 'my script.py' --verbose", ["-u", "my script.py", "--verbose"]),
        ("cwd", "web/static", "web/static"),  # relative: in the app's code, checked at start
        ("executable", "/bin/sh", "/bin/sh"),
        ("user", "root", "root"),
        ("daemon", "docker_local", "docker_local"),
        ("require.min_memory_mb", "512", {"min_memory_mb": "512"}),
        ("require.architectures", "amd64,arm64", {"architectures": "amd64,arm64"}),
    ],
)
def test_apps_set_stores_each_setting(berthd: Berthd, key: str, value: str, shown: object) -> None:
    berthd.call("apps:create s")
    answer = berthd.call(["apps:set", "s", key, value])
    assert answer.ok, answer.output
    settings = berthd.call("apps:info s").data["settings"]
    field = {"restart-policy": "restart_policy"}.get(key, key)
    if key.startswith("require."):
        field = "requirements"
    assert settings[field] == shown
    assert berthd.call(["apps:set", "s", key, ""]).ok
    assert field not in berthd.call("apps:info s").data["settings"]


def test_apps_set_mounts(berthd: Berthd) -> None:
    berthd.call("apps:create m")
    assert berthd.call(["apps:set", "m", "mount", "/data/in:INPUT,/data/out:OUTPUT"]).ok
    assert berthd.call("apps:info m").data["settings"]["mounts"] == [
        {"path": "/data/in", "function": "INPUT"},
        {"path": "/data/out", "function": "OUTPUT"},
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("colour", "blue", "unknown setting 'colour'"),
        ("timeout", "0", "at least 1 second"),
        ("timeout", "-5", "at least 1 second"),
        ("timeout", "soon", "whole seconds"),
        ("restart-policy", "sometimes", "no, on-failure[:N] or always"),
        ("executable", "relative/bin", "must be absolute"),
        ("executable", "/nonexistent/bin", "no such file"),
        ("executable", "/tmp", "is a directory"),
        ("executable", "{plain_file}", "permission denied"),
        ("user", "no-such-user-here", "no user"),
        ("user", "root:no-such-group", "no group"),
        ("mount", "/data:SIDEWAYS", "PATH:INPUT or PATH:OUTPUT"),
        ("mount", "data:INPUT", "must be absolute"),
        ("require.colour", "blue", "unknown requirement 'colour'"),
        ("require.min_memory_mb", "lots", "min_memory_mb"),
        ("require.min_cpu_cores", "-1", "min_cpu_cores"),
        ("require.architectures", "amd64,sparc", "sparc"),
        ("require.platform", "plan9", "platform"),
        ("cwd", "../other-app", "leaves the app's folder"),
        ("cwd", "/opt/myapp", "not in the app's folder"),
    ],
)
def test_apps_set_refuses_bad_values_clearly(
    berthd: Berthd, tmp_path: Path, key: str, value: str, message: str
) -> None:
    plain_file = tmp_path / "not-executable"
    plain_file.write_text("#!/bin/sh\n")
    plain_file.chmod(0o644)
    value = value.replace("{plain_file}", str(plain_file))
    berthd.call("apps:create s")
    answer = berthd.call(["apps:set", "s", key, value])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert message in answer.output
    assert berthd.call("apps:info s").data["settings"] == {}


def test_apps_set_on_a_missing_app(berthd: Berthd) -> None:
    assert berthd.call("apps:set ghost timeout 5").error == "not_found"


def test_config_set_get_show_unset(berthd: Berthd) -> None:
    berthd.call("apps:create env")
    answer = berthd.call(["config:set", "env", "A=1", "B=two words", "C=x=y"])
    assert answer.ok and "A, B, C" in answer.output
    assert "two words" not in answer.output  # values are not echoed
    assert berthd.call("config:get env B").output == "two words"
    assert berthd.call("config:get env C").output == "x=y"
    assert berthd.call("config:show env").data == {"A": "1", "B": "two words", "C": "x=y"}
    assert berthd.call("config:show env").output == "A=1\nB='two words'\nC=x=y"
    unset = berthd.call("config:unset env A Z")
    assert unset.ok and unset.data == {"removed": ["A"], "not_set": ["Z"], "restarted": []}
    assert berthd.call("config:get env A").error == "not_found"
    assert berthd.call("config:set env 1BAD=x").error == "invalid_argument"
    assert berthd.call("config:set env NOVALUE").error == "invalid_argument"
    assert berthd.call("config:set ghost A=1").error == "not_found"
    assert berthd.call("config:set env").error == "invalid_argument"


def test_config_values_are_never_logged(berthd: Berthd) -> None:
    berthd.call("apps:create secretive")
    berthd.call(["config:set", "secretive", "DB_PASSWORD=hunter2-s3cret"])
    berthd.call("config:get secretive DB_PASSWORD")
    berthd.call("config:show secretive")
    log = berthd.log()
    assert "DB_PASSWORD=***" in log
    assert "hunter2-s3cret" not in log
    assert (berthd.workdir / "berthd.stderr").read_text().count("hunter2") == 0


def test_config_is_dropped_with_the_app(berthd: Berthd) -> None:
    berthd.call("apps:create again")
    berthd.call("config:set again A=1")
    berthd.call("apps:destroy again --force")
    berthd.call("apps:create again")
    assert berthd.call("config:show again").data == {}


def test_the_database_is_private_wal_and_versioned(berthd: Berthd) -> None:
    berthd.call("apps:create stored")
    db = berthd.data_dir / "berthd.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
        assert conn.execute("SELECT name FROM apps").fetchall() == [("stored",)]


def test_a_database_from_a_newer_berthd_is_refused(berthd: Berthd, tmp_path: Path) -> None:
    berthd.stop()
    with sqlite3.connect(berthd.data_dir / "berthd.db") as conn:
        conn.execute("PRAGMA user_version=999")
    with pytest.raises(RuntimeError, match="newer than this berthd"):
        berthd.start()
