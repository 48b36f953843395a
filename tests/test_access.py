"""Who may do what: access rules, with real users calling through the socket from their own processes.

berthd runs as root with a config of rules; alice, bob and an operator are system users made for these
tests, each calling through socat run as that user (its uid, gid and groups, from SO_PEERCRED).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_proc import Berthd
from tests.test_sources import PROCFILE, git, make_tar
from tests.users import NEEDS_ROOT, User, system_users

pytestmark = NEEDS_ROOT


@pytest.fixture(scope="module")
def people() -> Iterator[tuple[User, User, User]]:
    with system_users("bacca", "baccb", "baccops", extra_group=True) as (alice, bob, ops):
        yield alice, bob, ops


def group_of(user: User) -> str:
    return f"{user.name}x"  # the extra group tests.users gives each user


def rules_text(alice: User, bob: User, ops: User, extra: str = "") -> str:
    return f"""
log_level = "info"

[[access.rule]]
name = "no destroying"
users = ["{alice.name}"]
commands = ["apps:destroy"]
apps = ["{alice.name}-keep"]
deny = true

[[access.rule]]
name = "own apps"
users = ["{alice.name}", "{bob.name}"]
commands = ["apps:*", "config:*", "ps:*", "run", "logs", "ping", "whoami", "access:check", "git:*", "jobs:*",
            "upload:*"]
apps = ["{{user}}-*"]
{extra}
[[access.rule]]
name = "operators"
groups = ["{group_of(ops)}"]
commands = ["apps:list", "ps:report", "logs", "whoami"]
"""


@pytest.fixture
def config(tmp_path: Path, people: tuple[User, User, User]) -> Path:
    path = tmp_path / "berthd.toml"
    path.write_text(rules_text(*people))
    path.chmod(0o644)
    return path


@pytest.fixture
def daemon(start_berthd: Callable[..., Berthd], reachable_tmp: Path, config: Path) -> Berthd:
    return start_berthd(root=reachable_tmp, extra_args=["--config", str(config), "--socket-mode", "0666"])


def ask(daemon: Berthd, user: User, *commands: str | dict[str, Any]) -> list[dict[str, Any]]:
    """Each command's final answer, sent on one connection by a process of `user`."""
    lines = "".join((json.dumps(c) if isinstance(c, dict) else c) + "\n" for c in commands)
    out = subprocess.run(
        ["socat", "-t", "30", "-", f"UNIX-CONNECT:{daemon.socket}"],
        input=lines.encode(), capture_output=True, timeout=90,
        user=user.uid, group=user.gid, extra_groups=os.getgrouplist(user.name, user.gid),
    )  # fmt: skip
    answers = [json.loads(line) for line in out.stdout.splitlines() if b'"ok"' in line]
    assert len(answers) == len(commands), (out.stdout, out.stderr)
    return answers


def one(daemon: Berthd, user: User, command: str | dict[str, Any]) -> dict[str, Any]:
    return ask(daemon, user, command)[0]


class Connection:
    """One connection kept open by a process of `user`: a command, its answer, another..."""

    def __init__(self, daemon: Berthd, user: User) -> None:
        self.client = subprocess.Popen(
            ["socat", "-t", "30", "-", f"UNIX-CONNECT:{daemon.socket}"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, user=user.uid, group=user.gid,
            extra_groups=os.getgrouplist(user.name, user.gid),
        )  # fmt: skip

    def send(self, line: str) -> dict[str, Any]:
        assert self.client.stdin is not None and self.client.stdout is not None
        self.client.stdin.write(line.encode() + b"\n")
        self.client.stdin.flush()
        answer: dict[str, Any] = json.loads(self.client.stdout.readline())
        return answer

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.client.stdin is not None
        self.client.stdin.close()
        self.client.wait(10)


def test_a_caller_may_do_what_its_rule_allows_and_nothing_else(
    daemon: Berthd, people: tuple[User, User, User]
) -> None:
    alice, bob, _ = people
    made, pinged, theirs, unlisted = ask(
        daemon, alice, f"apps:create {alice.name}-web", "ping", f"apps:create {bob.name}-web", "version"
    )
    assert made["ok"], made
    assert pinged["output"] == "pong"
    assert (theirs["ok"], theirs["error"]) == (False, "forbidden"), theirs
    assert "berthd.toml" in theirs["output"] and theirs["data"]["rules"].endswith(
        "berthd.toml"
    )  # the rule set
    assert (unlisted["ok"], unlisted["error"]) == (False, "forbidden"), unlisted
    assert daemon.call("apps:list").data[0]["name"] == f"{alice.name}-web"  # root sees all, and only it
    assert [a["name"] for a in daemon.call("apps:list").data] == [f"{alice.name}-web"]


def test_an_app_the_caller_may_not_see_answers_exactly_as_a_missing_one(
    daemon: Berthd, people: tuple[User, User, User]
) -> None:
    alice, bob, _ = people
    assert daemon.call(["apps:from-local", f"{bob.name}-secret", "/bin/sleep", "--", "100"]).ok
    assert daemon.call(f"ps:start {bob.name}-secret").ok
    for template in ("apps:info {}", "ps:report {}", "logs {}", "config:show {}", "ps:stop {}",
                     "apps:destroy {} --force", "run {}", "config:set {} A=1", "jobs:list {}"):  # fmt: skip
        existing, missing = ask(
            daemon, alice, template.format(f"{bob.name}-secret"), template.format(f"{bob.name}-nosuch")
        )
        assert existing == json.loads(json.dumps(missing).replace("-nosuch", "-secret")), template
        assert existing["error"] == "not_found", existing
    assert daemon.call(f"ps:report {bob.name}-secret").data[0]["state"] == "RUNNING"  # untouched
    daemon.call(f"ps:stop {bob.name}-secret")


def test_lists_show_only_what_the_caller_may_see(daemon: Berthd, people: tuple[User, User, User]) -> None:
    alice, bob, ops = people
    for user in (alice, bob):
        assert one(daemon, user, f"apps:create {user.name}-one")["ok"]
    assert daemon.call("apps:create rootsown").ok
    listed = {u.name: one(daemon, u, "apps:list")["data"] for u in (alice, bob, ops)}
    assert [a["name"] for a in listed[alice.name]] == [f"{alice.name}-one"]
    assert [a["name"] for a in listed[bob.name]] == [f"{bob.name}-one"]
    assert {a["name"] for a in listed[ops.name]} == {f"{alice.name}-one", f"{bob.name}-one", "rootsown"}
    report = one(daemon, alice, "ps:report")
    assert report["ok"] and all(row["app"].startswith(alice.name) for row in report["data"]), report
    denied = one(daemon, ops, "apps:create opsapp")  # operators read; they make nothing
    assert denied["error"] == "forbidden", denied


def test_a_deny_rule_before_an_allowing_one_wins(daemon: Berthd, people: tuple[User, User, User]) -> None:
    alice, _, _ = people
    made, destroyed = ask(
        daemon, alice, f"apps:create {alice.name}-keep", f"apps:destroy {alice.name}-keep --force"
    )
    assert made["ok"], made
    assert destroyed["error"] == "forbidden" and "'no destroying'" in destroyed["output"], destroyed
    assert daemon.call(f"apps:info {alice.name}-keep").ok


def test_processes_run_as_the_caller_and_user_may_not_name_another(
    daemon: Berthd, people: tuple[User, User, User]
) -> None:
    alice, bob, _ = people
    app = f"{alice.name}-id"
    made, ran = ask(daemon, alice, f"apps:from-local {app} /bin/sh -- -c 'id -u; id -g'", f"run {app}")
    assert made["ok"], made
    assert ran["ok"], ran
    assert (Path(ran["data"]["output_dir"]) / "stdout.txt").read_text().split() == [
        str(alice.uid),
        str(alice.gid),
    ]
    assert daemon.call(f"apps:info {app}").data["settings"]["user"] == alice.name
    for other in ("root", bob.name, "0:0"):
        refused = one(daemon, alice, f"apps:from-local {alice.name}-as /bin/true --user {other}")
        assert refused["error"] == "forbidden" and "run_as_other" in refused["output"], refused
        unset = one(daemon, alice, f"apps:set {app} user {other}")
        assert unset["error"] == "forbidden", unset
    assert one(daemon, alice, f"apps:set {app} user ''")["error"] == "forbidden"  # berthd's own: root
    assert one(daemon, alice, f"apps:from-local {alice.name}-as /bin/true --user {alice.name}")["ok"]
    assert daemon.call(f"apps:info {alice.name}-as").ok
    assert "berth" not in daemon.call("apps:list").output.replace(alice.name, "")  # nothing half-made


def test_code_of_an_app_that_runs_as_someone_else_is_not_the_callers_to_run(
    daemon: Berthd, config: Path, people: tuple[User, User, User]
) -> None:
    alice, _, _ = people
    app = f"{alice.name}-rootly"
    assert daemon.call(["apps:from-local", app, "/bin/sh", "--", "-c", "id -u"]).ok  # root's, as root
    for command in (f"run {app}", f"ps:start {app}", f"config:set {app} LD_PRELOAD=/tmp/x.so",
                    f"apps:set {app} user {alice.name}", f"git:from-archive {app} file:///nonexistent.tar.gz"):  # fmt: skip
        answer = one(daemon, alice, command)
        assert answer["error"] == "forbidden", (command, answer)
        assert "runs as berthd's own user (root)" in answer["output"], answer
    assert "LD_PRELOAD" not in daemon.call(f"config:show {app}").output
    assert daemon.call(f"apps:info {app}").data["settings"].get("user") is None


def test_a_build_runs_as_the_caller(
    daemon: Berthd, people: tuple[User, User, User], reachable_tmp: Path
) -> None:
    alice, _, _ = people
    repo = reachable_tmp / "repo"
    repo.mkdir(mode=0o755)
    (repo / "build.sh").write_text("id -u > built-by\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    subprocess.run(["chown", "-R", f"{alice.uid}:{alice.gid}", str(repo)], check=True)  # her own repository
    answer = one(daemon, alice, f"git:sync {alice.name}-built file://{repo} --build-cmd 'sh build.sh'")
    assert answer["ok"], answer
    release = (daemon.data_dir / "apps" / f"{alice.name}-built" / "current").resolve()
    assert (release / "built-by").read_text().strip() == str(alice.uid)


def test_files_the_caller_cannot_read_are_refused(
    daemon: Berthd, people: tuple[User, User, User], tmp_path: Path
) -> None:
    alice, _, _ = people
    private = tmp_path / "private.tar.gz"  # in root's own folder
    make_tar(private, {"Procfile": PROCFILE})
    answer = one(daemon, alice, f"git:from-archive {alice.name}-peek file://{private}")
    assert answer["error"] == "invalid_argument" and "may not read that file" in answer["output"], answer
    assert one(daemon, alice, "apps:list")["data"] == []
    tool = tmp_path / "tool"  # an executable in root's own folder
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    answers = ask(
        daemon, alice, *(f"apps:from-local {alice.name}-{n} {p}" for n, p in
                         (("a", tool), ("b", tmp_path / "missing"), ("c", "/etc/shadow"), ("d", "/nonexistent")))
    )  # fmt: skip
    texts = [
        a["output"].replace(str(p), "P")
        for a, p in zip(answers, (tool, tmp_path / "missing", "/etc/shadow", "/nonexistent"), strict=True)
    ]
    assert texts == ["invalid executable 'P': there is no such file, or you may not run it"] * 4, answers
    assert one(daemon, alice, f"apps:from-local {alice.name}-e /bin/true")["ok"]  # one anyone may run


def test_whoami_and_access_check_describe_the_caller(daemon: Berthd, people: tuple[User, User, User]) -> None:
    alice, bob, ops = people
    me, allowed, denied, hidden, rules = ask(
        daemon, alice, "whoami", f"access:check apps:create {alice.name}-x",
        f"access:check apps:from-local {alice.name}-x /bin/true --user root",
        f"access:check apps:info {bob.name}-x", "access:rules",
    )  # fmt: skip
    assert me["data"]["uid"] == alice.uid and me["data"]["user"] == alice.name, me
    assert group_of(alice) in me["data"]["groups"] and me["data"]["pid"] > 0
    assert me["data"]["access"] == "limited by the access rules"
    assert allowed["data"]["allowed"] is True and "'own apps'" in allowed["data"]["rule"], allowed
    assert denied["data"]["allowed"] is False and "run_as_other" in denied["data"]["why"], denied
    assert hidden["data"]["allowed"] is False and hidden["data"]["why"] == f"App {bob.name}-x does not exist"
    assert rules["error"] == "forbidden", rules
    shown = daemon.call("access:rules")
    assert shown.ok and len(shown.data) == 3 and "'operators'" in shown.output, shown
    assert one(daemon, ops, "whoami")["data"]["groups"][1:] == [group_of(ops)]


def test_a_reload_takes_effect_on_an_open_connection(
    daemon: Berthd, config: Path, people: tuple[User, User, User]
) -> None:
    alice, bob, ops = people
    with Connection(daemon, alice) as connection:
        send = connection.send
        assert send("version")["error"] == "forbidden"
        config.write_text(config.read_text().replace('"access:check",', '"access:check", "version",'))
        os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while "SIGHUP: config reloaded" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert send("version")["ok"], daemon.log()
        # a file that does not parse: refused with its line, and the rules stay as they were
        config.write_text(config.read_text() + '\n[[access.rule]]\nusers = ["x"]\ncommands = [ping]\n')
        os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        while "was not reloaded" not in daemon.log() and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        assert "was not reloaded" in daemon.log() and "line" in daemon.log().split("was not reloaded")[1]
        assert send("version")["ok"]
        assert send(f"apps:create {bob.name}-no")["error"] == "forbidden"
    assert daemon.call("ping").ok


def test_rules_that_others_may_change_or_that_do_not_parse_keep_berthd_from_starting(
    start_berthd: Callable[..., Berthd], tmp_path: Path, config: Path
) -> None:
    config.chmod(0o666)
    with pytest.raises(RuntimeError, match="others may change it"):
        start_berthd("open", extra_args=["--config", str(config)])
    config.chmod(0o644)
    config.write_text(
        '[[access.rule]]\nusers = ["a"]\ncommands = ["ping"]\n\n[[access.rule]]\nusres = ["b"]\n'
    )
    with pytest.raises(RuntimeError, match=r"unknown field `usres`.*line 5"):
        start_berthd("typo", extra_args=["--config", str(config)])
    config.write_text('[[access.rule]]\nusers = ["a"]\ncommands = ["app:*"]\n')
    with pytest.raises(
        RuntimeError, match=r"rule 1 \(line 1 of .*\): command pattern 'app:\*' matches no command"
    ):
        start_berthd("nomatch", extra_args=["--config", str(config)])
    assert stat.S_IMODE(config.stat().st_mode) == 0o644


def _socat_mounts() -> tuple[list[Any], str]:
    """socat and the libraries it loads, each bind-mounted read-only at the path the loader asks for
    (the test image has busybox only); and their folders, for the loader."""
    from docker.types import Mount

    socat = shutil.which("socat")
    assert socat is not None
    listed = subprocess.run(["ldd", socat], capture_output=True, text=True, check=True).stdout
    paths = sorted({socat, *re.findall(r"(/\S+) \(0x", listed)})
    mounts = [Mount(p, os.path.realpath(p), type="bind", read_only=True) for p in paths]
    return mounts, ":".join(sorted({os.path.dirname(p) for p in paths}))


def test_a_container_with_the_socket_mounted_is_limited_by_its_uid_rule(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, tmp_path: Path, docker_client: Any
) -> None:
    from tests.docker_engine import BUSYBOX_IMAGE

    uid = 4242  # a container's user: no account on this host
    config = tmp_path / "container.toml"
    config.write_text(
        f'[[access.rule]]\nname = "ci container"\nuids = [{uid}]\n'
        'commands = ["whoami", "apps:create", "apps:list", "apps:destroy"]\napps = ["ci-*"]\n'
    )
    daemon = start_berthd(root=reachable_tmp, extra_args=["--config", str(config), "--socket-mode", "0666"])
    assert daemon.call("apps:create prod-db").ok
    from docker.types import Mount

    mounts, library_path = _socat_mounts()
    mounts.append(Mount("/run/berthd", str(daemon.socket.parent), type="bind"))
    script = (
        'printf "whoami\\napps:create ci-web\\napps:create prod-web\\napps:list\\napps:destroy prod-db --force\\n"'
        " | socat -t 10 - UNIX-CONNECT:/run/berthd/berthd.sock"
    )
    output = docker_client.containers.run(
        BUSYBOX_IMAGE, ["sh", "-c", script], user=f"{uid}:{uid}", network_mode="none", mounts=mounts,
        environment={"LD_LIBRARY_PATH": library_path}, remove=True, stdout=True, stderr=True,
    )  # fmt: skip
    me, made, theirs, listed, destroyed = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert (me["data"]["uid"], me["data"]["user"], me["data"]["access"]) == (
        uid,
        None,
        "limited by the access rules",
    )
    assert made["ok"], made
    assert theirs["error"] == "forbidden", theirs
    assert [a["name"] for a in listed["data"]] == ["ci-web"]
    assert destroyed == {"ok": False, "output": "App prod-db does not exist", "error": "not_found"}
    assert {a["name"] for a in daemon.call("apps:list").data} == {"ci-web", "prod-db"}


def _indented_block_after(text: str, heading: str) -> str:
    """The first indented (code) block after `heading`, unindented."""
    after = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("    "))
    block = []
    for line in after[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


@pytest.mark.parametrize(
    ("document", "heading"), [("README.md", "### Who may do what"), ("docs/access.md", "## Access rules")]
)
def test_the_rules_the_documents_show_load_as_written(
    start_berthd: Callable[..., Berthd], tmp_path: Path, document: str, heading: str
) -> None:
    from tests.daemon_proc import ROOT

    config = tmp_path / "documented.toml"
    config.write_text(_indented_block_after((ROOT / document).read_text(), heading))
    daemon = start_berthd(extra_args=["--config", str(config)])
    shown = daemon.call("access:rules")
    assert shown.ok and len(shown.data) == 1, shown
    assert shown.data[0]["commands"][0] == "apps:*" and shown.data[0]["run_as_other"] is False


def test_without_rules_a_new_app_runs_as_its_maker_and_anyone_may_do_anything(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, people: tuple[User, User, User]
) -> None:
    alice, _, _ = people
    daemon = start_berthd("open", root=reachable_tmp, extra_args=["--socket-mode", "0666"])
    made, ran, me = ask(daemon, alice, "apps:from-local mine /bin/sh -- -c 'id -u'", "run mine", "whoami")
    assert made["ok"] and ran["ok"], (made, ran)
    assert (Path(ran["data"]["output_dir"]) / "stdout.txt").read_text().strip() == str(alice.uid)
    assert me["data"]["access"] == "unlimited: no access rules are set"
    as_root, ran_as_root = ask(
        daemon, alice, "apps:from-local theirs /bin/sh --user root -- -c 'id -u'", "run theirs"
    )  # what the socket's mode lets through is root: the reason for rules
    assert as_root["ok"] and ran_as_root["ok"], (as_root, ran_as_root)
    assert (Path(ran_as_root["data"]["output_dir"]) / "stdout.txt").read_text().strip() == "0"


def test_a_group_the_caller_is_not_in_is_someone_else(
    daemon: Berthd, people: tuple[User, User, User]
) -> None:
    alice, bob, _ = people
    app = f"{alice.name}-grp"
    assert one(daemon, alice, f"apps:from-local {app} /bin/sh -- -c 'id -g; id -G'")["ok"]
    for group in ("shadow", "root", "0", group_of(bob), str(bob.gid)):
        for command in (f"apps:set {app} user {alice.name}:{group}",
                        f"apps:from-local {alice.name}-g2 /bin/true --user {alice.name}:{group}"):  # fmt: skip
            answer = one(daemon, alice, command)
            assert answer["error"] == "forbidden", (command, answer)
    assert one(daemon, alice, f"apps:set {app} user {alice.name}:{group_of(alice)}")["ok"]  # one of hers
    ran = one(daemon, alice, f"run {app}")
    assert (Path(ran["data"]["output_dir"]) / "stdout.txt").read_text().split()[0] == str(alice.extra_gid)


def test_an_upload_ends_only_into_an_app_the_caller_may_deploy_to(
    daemon: Berthd, people: tuple[User, User, User]
) -> None:
    alice, _, _ = people
    app = f"{alice.name}-later"
    data = b"#!/bin/sh\nid -u\n"
    begun = one(daemon, alice, f"upload:begin {app} run.sh {len(data)} 1")
    assert begun["ok"], begun
    session = begun["data"]["session_id"]
    assert daemon.call(["apps:from-local", app, "/bin/sleep", "--", "100"]).ok  # root's, meanwhile
    chunk, ended = ask(
        daemon, alice, f"upload:chunk {session} 0 {base64.b64encode(data).decode()}", f"upload:end {session}"
    )
    assert chunk["ok"], chunk
    assert ended["error"] == "forbidden" and "runs as berthd's own user" in ended["output"], ended
    assert daemon.call(f"apps:info {app}").data["source"] == "local"  # root's app, untouched


def test_an_app_that_runs_as_another_is_seen_but_not_acted_on(
    daemon: Berthd, people: tuple[User, User, User]
) -> None:
    alice, bob, _ = people
    app = f"{alice.name}-shared"
    assert daemon.call(["apps:from-local", app, "/bin/sleep", "--user", bob.name, "--", "100"]).ok
    assert daemon.call(["config:set", app, "DBPASS=hunter2"]).ok
    info, report = ask(daemon, alice, f"apps:info {app}", f"ps:report {app}")
    assert info["ok"] and report["ok"], (info, report)
    for command in (f"config:show {app}", f"config:get {app} DBPASS", f"logs {app}", f"ps:stop {app}",
                    f"ps:set {app} restart-policy no", f"apps:destroy {app} --force", f"ps:start {app}"):  # fmt: skip
        answer = one(daemon, alice, command)
        assert answer["error"] == "forbidden" and "hunter2" not in json.dumps(answer), (command, answer)
    assert daemon.call(f"apps:info {app}").ok


def test_a_caller_removed_from_a_group_loses_its_rule_on_an_open_connection(
    daemon: Berthd, people: tuple[User, User, User]
) -> None:
    _, _, ops = people
    with Connection(daemon, ops) as connection:
        assert connection.send("apps:list")["ok"]
        subprocess.run(["gpasswd", "--delete", ops.name, group_of(ops)], check=True, capture_output=True)
        try:
            time.sleep(6)  # past the 5 s the system's answer is kept
            assert connection.send("apps:list")["error"] == "forbidden"
        finally:
            subprocess.run(["gpasswd", "--add", ops.name, group_of(ops)], check=True, capture_output=True)


def test_the_default_deploy_daemon_is_judged_and_not_named_to_who_may_not_use_it(
    daemon: Berthd, people: tuple[User, User, User]
) -> None:
    alice, _, _ = people
    registered = daemon.call(
        [
            "daemons:register",
            "secretname",
            "Hidden",
            "manual-install",
            "http",
            "null",
            "http://nc.local",
            "--set-default",
        ]
    )
    assert registered.ok, registered.output
    checked, ran = ask(
        daemon,
        alice,
        f"access:check git:from-image {alice.name}-img busybox",
        f"git:from-image {alice.name}-img busybox",
    )
    assert checked["data"]["allowed"] is False and "default deploy daemon" in checked["data"]["why"], checked
    assert ran["error"] == "forbidden" and "default deploy daemon" in ran["output"], ran
    assert "secretname" not in json.dumps([checked, ran])
    assert daemon.call(f"apps:info {alice.name}-img").error == "not_found"
