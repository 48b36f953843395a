"""Secrets never reach the daemon log or an answer, whichever request form carries them; the log file
itself is private from its first instant, holds no app output, and is rotated by size."""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from berthd.access.rules import RuleSet
from berthd.commands.git import SyncParams
from berthd.log import LOG, RedactingFormatter
from berthd.server.context import Context
from berthd.server.dispatch import dispatch
from berthd.server.metrics import Metrics
from berthd.server.params import Params, bind_named, bind_tokens
from berthd.server.peercred import Peer
from berthd.server.redaction import Scrubber, without_credentials
from berthd.server.registry import REGISTRY, Result
from tests.daemon_proc import Berthd
from tests.wire import RawConnection

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: a clone or a download fails at once


def exchange(berthd: Berthd, request: bytes) -> list[bytes]:
    """Every line berthd sends for one request (events and the final answer), raw."""
    lines = []
    with RawConnection(berthd.socket, timeout=60) as conn:
        conn.send(request + b"\n")
        while True:
            lines.append(conn.read_line())
            if "ok" in json.loads(lines[-1]):
                return lines


def forms(cmd: str, words: list[str], named: dict[str, Any]) -> dict[str, bytes]:
    """One request in each of its three forms: a text line, a JSON list of words, JSON named parameters."""
    return {
        "text": " ".join([cmd, *words]).encode(),
        "json words": json.dumps({"cmd": cmd, "args": words}).encode(),
        "json named": json.dumps({"cmd": cmd, "args": named}).encode(),
    }


def assert_nowhere(berthd: Berthd, answers: list[bytes], *fragments: str) -> None:
    """None of the fragments in any answer line, in the raw bytes of the log file, or on stderr."""
    logged = berthd.log_file.read_bytes() + berthd.stderr_file.read_bytes()
    for fragment in fragments:
        raw = fragment.encode()
        assert not [line for line in answers if raw in line], (fragment, answers)
        assert raw not in logged, fragment


def password() -> str:
    return f"PW-{secrets.token_hex(6)}"


def test_a_password_in_a_git_url_is_hidden_in_every_request_form(berthd: Berthd) -> None:
    for form in ("text", "json words", "json named"):
        pw = password()
        url = f"http://alice:{pw}@{UNREACHABLE}/r.git"
        answers = exchange(berthd, forms("git:sync", ["x", url], {"app": "x", "repository": url})[form])
        assert json.loads(answers[-1])["ok"] is False, answers
        assert_nowhere(berthd, answers, pw)
    assert f"repository='http://***@{UNREACHABLE}/r.git'" in berthd.log()


def test_a_password_with_at_signs_is_hidden_up_to_the_last_at(berthd: Berthd) -> None:
    pw = f"p@ss-{secrets.token_hex(4)}@x"
    url = f"http://alice:{pw}@{UNREACHABLE}/r.git"
    for request in forms("git:sync", ["x", url], {"app": "x", "repository": url}).values():
        answers = exchange(berthd, request)
        assert_nowhere(berthd, answers, pw, pw.split("@")[1], f"{pw.split('@')[2]}@{UNREACHABLE}")
    assert f"http://***@{UNREACHABLE}/r.git" in berthd.log()


def test_a_git_password_option_is_hidden_in_every_request_form(berthd: Berthd) -> None:
    pw = password()
    url = f"http://{UNREACHABLE}/r.git"
    requests = forms(
        "git:sync", ["x", url, "--username", "alice", "--password", pw],
        {"app": "x", "repository": url, "username": "alice", "password": pw},
    )  # fmt: skip
    requests["text, --password=P"] = f"git:sync x {url} --password={pw}".encode()
    for request in requests.values():
        assert_nowhere(berthd, exchange(berthd, request), pw)
    assert "password='***'" in berthd.log() and "--password=***" in berthd.log()


def test_a_password_in_an_archive_url_is_hidden_in_every_request_form(berthd: Berthd) -> None:
    pw = password()
    url = f"https://bob:{pw}@{UNREACHABLE}/app.tar.gz"
    for request in forms("git:from-archive", ["y", url], {"app": "y", "url": url}).values():
        answers = exchange(berthd, request)
        assert json.loads(answers[-1])["ok"] is False
        assert_nowhere(berthd, answers, pw)
    # and a file:// URL the caller names, with credentials that make no sense there
    assert_nowhere(
        berthd, exchange(berthd, f"git:from-archive y file://u:{pw}@/nonexistent.tgz".encode()), pw
    )


def test_a_config_value_given_without_its_key_is_never_echoed(berthd: Berthd) -> None:
    assert berthd.call("apps:create cfg").ok
    value = f"S3CRET-{secrets.token_hex(6)}"
    requests = forms("config:set", ["cfg", value], {"app": "cfg", "pairs": [value]})
    requests["after a good pair"] = f"config:set cfg GOOD=1 {value}".encode()
    requests["a key that is no name"] = f"config:set cfg {value}-x=1".encode()
    for request in requests.values():
        answers = exchange(berthd, request)
        answer = json.loads(answers[-1])
        assert (answer["ok"], answer["error"]) == (False, "invalid_argument"), answer
        assert "pair" in answer["output"]
        assert_nowhere(berthd, answers, value)
    assert berthd.call("config:show cfg").data == {}  # nothing half-set


def test_a_nextcloud_url_with_credentials_is_shown_without_them(berthd: Berthd) -> None:
    pw = password()
    nc_url = f"https://admin:{pw}@nextcloud.local"
    register = ["daemons:register", "manual", "Manual", "manual-install", "http", "null", nc_url]
    registered = berthd.call(register)
    assert registered.ok, registered.output
    listing = berthd.call("daemons:list")
    alias = berthd.call("app_api:daemon:list")
    for answer in (registered, listing, alias):
        shown = answer.output + json.dumps(answer.data)
        assert pw not in shown and "admin" not in shown, shown
    assert "https://***@nextcloud.local" in listing.output
    assert listing.data[0]["deploy_config"]["nextcloud_url"] == "https://***@nextcloud.local"
    refused = exchange(
        berthd, json.dumps({"cmd": "daemons:register", "args": [*register[1:6], f"ftp://a:{pw}@x"]}).encode()
    )
    assert json.loads(refused[-1])["error"] == "invalid_argument"
    checked = exchange(berthd, b"daemons:check manual")
    assert_nowhere(berthd, [*refused, *checked], pw)


@pytest.mark.parametrize("form", ["text", "json"])
def test_stdin_and_env_secrets_keep_no_prefix_in_the_log(berthd: Berthd, form: str) -> None:
    value = f"k={secrets.token_hex(6)}"  # a secret that looks like KEY=VALUE is still all secret
    if form == "text":
        answer = berthd.call(["run", "nothing-here", "--stdin", value])
    else:
        answer = berthd.call("run", {"app": "nothing-here", "stdin": value})
    assert answer.error == "not_found"
    assert value.encode() not in berthd.log_file.read_bytes()
    assert b"k=***" not in berthd.log_file.read_bytes()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://alice:pw@host/r.git", "http://***@host/r.git"),
        ("https://alice:p@ss@w@host:8443/x?to=a@b", "https://***@host:8443/x?to=a@b"),
        ("https://TOKEN@github.com/o/r", "https://***@github.com/o/r"),
        (
            "git:sync x ssh://git@host/r.git and http://u:p@h",
            "git:sync x ssh://***@host/r.git and http://***@h",
        ),
        ("https://host/path/user@example.org", "https://host/path/user@example.org"),  # no userinfo there
        ("mail me at a@b.c", "mail me at a@b.c"),
    ],
)
def test_a_url_loses_its_user_and_password_up_to_the_last_at_of_its_authority(text: str, shown: str) -> None:
    assert without_credentials(text) == shown


def test_both_request_forms_show_their_arguments_through_one_redaction() -> None:
    url = "http://alice:PW-1@host/r.git"
    words = bind_tokens("git:sync", SyncParams, ["x", url, "--password", "a=b", "--env", "K=V1234"])
    named = bind_named(
        "git:sync", SyncParams, {"app": "x", "repository": url, "password": "a=b", "env": ["K=V1234"]}
    )
    for bound in (words, named):
        text = " ".join(bound.redacted)
        assert "PW-1" not in text and "a=b" not in text and "a=***" not in text and "V1234" not in text, text
        assert "http://***@host/r.git" in text and "K=***" in text
        assert bound.scrubber.text("failed: PW-1, V1234 and a=b") == "failed: ***, *** and a=b"  # a=b: short


def test_a_secret_is_scrubbed_where_it_stands_alone_not_inside_other_words_or_numbers() -> None:
    scrubber = Scrubber(["1000", "hunter2", "ab"])
    assert (
        scrubber.text("job-21000 took 1000 ms; 'hunter2' != hunter22; ab")
        == "job-21000 took *** ms; '***' != hunter22; ab"
    )
    assert Scrubber.data({"job_id": "job-1000", "url": "http://u:p@h/"}) == {
        "job_id": "job-1000",
        "url": "http://***@h/",
    }


class BoomParams(Params):
    url: str
    password: str | None = None
    positional = ("url",)
    secret = frozenset({"password"})


async def boom(ctx: Context, params: BoomParams) -> Result:
    raise RuntimeError(f"cannot fetch {params.url} as {params.password}")


def test_an_internal_error_logs_its_traceback_without_the_request_secrets() -> None:
    REGISTRY.command("test:boom", summary="fails", mutating=False)(boom)
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(handler.format(record))  # type: ignore[method-assign]
    handler.setFormatter(RedactingFormatter())
    LOG.addHandler(handler)

    async def emit(event: object) -> None:
        return None

    try:
        line = b"test:boom http://alice:URLPASS9@h/x --password OPTPASS9"
        # all this command reaches
        services: Any = types.SimpleNamespace(rules=RuleSet(), audit=None, metrics=Metrics())
        answer = trio.run(dispatch, services, line, Peer(1, 0, 0), emit)
    finally:
        LOG.removeHandler(handler)
        REGISTRY._names.pop("test:boom")
        REGISTRY._commands.pop("test:boom")
    assert answer is not None and answer.error == "internal"
    text = "\n".join(logged)
    assert "RuntimeError: cannot fetch http://***@h/x as ***" in text, text
    assert "URLPASS9" not in text and "OPTPASS9" not in text


def test_app_output_returned_by_logs_is_counted_not_copied_into_the_log(berthd: Berthd) -> None:
    prefix = f"app-says-{secrets.token_hex(6)}"
    marker = f"{prefix}-1337"  # what the app prints; its command line (which is logged) says $((1000+337))
    script = f"echo {prefix}-$((1000+337)); exec sleep 60"
    assert berthd.call(["apps:from-local", "talker", "/bin/sh", "--", "-c", script]).ok
    assert berthd.call("ps:start talker").ok
    deadline = time.monotonic() + 10
    while marker not in (answer := berthd.call("logs talker")).output and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker in answer.output
    assert berthd.call("ps:stop talker").ok
    log = berthd.log_file.read_bytes()
    assert marker.encode() not in log
    assert b'cmd="logs talker" -> {"ok":true,"output":"<' in log and b"characters not logged>" in log
    # a failure's short fixed answer stays readable
    refused = berthd.call("logs ghost")
    assert refused.error == "not_found"
    assert json.dumps(refused.output).encode() in berthd.log_file.read_bytes()


def log_descriptors(berthd: Berthd) -> list[str]:
    """Where berthd's descriptors that lead to its log file (or its rotated copies) point."""
    assert berthd.proc is not None
    fd_dir = Path(f"/proc/{berthd.proc.pid}/fd")
    targets = []
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(berthd.log_file)):
            targets.append(target)
    return targets


def test_the_log_file_is_0640_from_its_first_instant_whatever_the_umask(tmp_path: Path) -> None:
    daemon = Berthd(tmp_path / "loose")
    daemon.workdir.mkdir()
    old = os.umask(0)  # berthd inherits it: the mode must come from the open, not from the umask
    try:
        daemon.start(wait=False)
    finally:
        os.umask(old)
    try:
        deadline = time.monotonic() + 10
        while not daemon.log_file.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert stat.S_IMODE(daemon.log_file.stat().st_mode) == 0o640  # the first look, before any command
        daemon.wait_ready()
        assert stat.S_IMODE(daemon.log_file.stat().st_mode) == 0o640
        # one descriptor for both writers (the command log and the logging module)
        assert log_descriptors(daemon) == [str(daemon.log_file)]
        # the logging module's lines go through that descriptor too
        while b"listening on" not in daemon.log_file.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"listening on" in daemon.log_file.read_bytes()
    finally:
        daemon.stop()


def test_a_log_file_left_world_readable_is_made_private(tmp_path: Path) -> None:
    daemon = Berthd(tmp_path / "old")
    daemon.workdir.mkdir()
    daemon.log_file.write_bytes(b"from an older berthd\n")
    daemon.log_file.chmod(0o644)
    daemon.start()
    try:
        assert stat.S_IMODE(daemon.log_file.stat().st_mode) == 0o640
        assert daemon.log_file.read_bytes().startswith(b"from an older berthd\n")
    finally:
        daemon.stop()


def test_the_log_file_is_rotated_by_size(start_berthd: Callable[..., Berthd]) -> None:
    daemon = start_berthd(extra_args=["--log-file-max-bytes", "1024", "--log-file-backups", "2"])
    with RawConnection(daemon.socket) as conn:
        for index in range(60):
            assert conn.request(f'{{"cmd": "ping", "id": {index}}}'.encode())["output"] == "pong"
    rotated = [daemon.log_file, Path(f"{daemon.log_file}.1"), Path(f"{daemon.log_file}.2")]
    assert all(path.exists() for path in rotated)
    assert not Path(f"{daemon.log_file}.3").exists()
    longest = 300  # a line of this log is shorter than that
    for path in rotated:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        text = path.read_bytes()
        assert 0 < len(text) <= 1024 + longest, (path, len(text))
        assert text.endswith(b"\n") and all(line.startswith(b"20") for line in text.splitlines()), text
    assert b'"id":59' in daemon.log_file.read_bytes()  # the newest is in the file berthd writes
    # both writers follow the rotation onto the new file, still through one descriptor
    assert log_descriptors(daemon) == [str(daemon.log_file)]
    daemon.stop()
    assert b"berthd stopped" in daemon.log_file.read_bytes()


@pytest.mark.parametrize("form", ["text", "json words", "json named"])
@pytest.mark.parametrize("cut", ["/", "?", "#"])
def test_a_password_holding_a_raw_slash_or_question_mark_is_hidden_and_refused(
    berthd: Berthd, form: str, cut: str
) -> None:
    """`/`, `?` and `#` end a URL's authority for a parser, so `u:PW/x@host` has no userinfo to it: the
    whole part before the last `@` is hidden all the same, and such a URL is refused, not fetched."""
    pw = f"PW{secrets.token_hex(4)}{cut}x{secrets.token_hex(4)}"
    for cmd, key, url in (
        ("git:sync", "repository", f"http://u:{pw}@{UNREACHABLE}/r.git"),
        ("git:from-archive", "url", f"https://u:{pw}@{UNREACHABLE}/app.tar.gz"),
    ):
        answers = exchange(berthd, forms(cmd, ["x", url], {"app": "x", key: url})[form])
        final = json.loads(answers[-1])
        assert (final["ok"], final["error"]) == (False, "invalid_argument"), final
        assert "must be percent-encoded" in final["output"]
        assert_nowhere(berthd, answers, pw, *pw.split(cut))


@pytest.mark.parametrize("form", ["json words", "json named"])
def test_a_password_holding_a_blank_is_hidden_and_refused(berthd: Berthd, form: str) -> None:
    pw = f"PW{secrets.token_hex(4)} {secrets.token_hex(4)}"
    url = f"http://u:{pw}@{UNREACHABLE}/r.git"
    answers = exchange(berthd, forms("git:sync", ["x", url], {"app": "x", "repository": url})[form])
    assert json.loads(answers[-1])["error"] == "invalid_argument"
    assert_nowhere(berthd, answers, *pw.split(" "))


@pytest.mark.parametrize("form", ["text", "json named"])
def test_a_daemon_option_holding_a_credential_is_hidden_in_the_log_and_the_listing(
    berthd: Berthd, form: str
) -> None:
    pw = password()
    words = ["m1", "Manual", "manual-install", "http", "null", "https://nc.local"]
    options = [f"PROXY_TOKEN={pw}", "OVERRIDE_APP_HOST=0.0.0.0"]
    named = dict(
        zip(
            ["name", "display_name", "accepts_deploy_id", "protocol", "host", "nextcloud_url"],
            words,
            strict=True,
        )
    )
    requests = {
        "text": " ".join(["daemons:register", *words, *(f"--option {o}" for o in options)]).encode(),
        "json named": json.dumps({"cmd": "daemons:register", "args": {**named, "option": options}}).encode(),
    }
    answers = exchange(berthd, requests[form])
    assert json.loads(answers[-1])["ok"], answers
    listing = berthd.call("daemons:list")
    assert listing.data[0]["deploy_config"]["additional_options"] == {
        "PROXY_TOKEN": "***",
        "OVERRIDE_APP_HOST": "0.0.0.0",
    }
    assert_nowhere(berthd, [*answers, listing.output.encode(), json.dumps(listing.data).encode()], pw)
