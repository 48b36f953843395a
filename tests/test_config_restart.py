"""config:* as a dokku user expects it: a change restarts the running processes (unless --no-restart),
a process starting meanwhile gets the new config, and config:export is read back by a real sh."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import docker
import pytest

from tests.daemon_proc import Berthd
from tests.test_docker_runner import deploy, engine_berthd, with_health_check  # noqa: F401 - the fixture
from tests.test_native_runner import wait_for

GREETER = ["/bin/sh", "--", "-c", 'echo "greeting-$GREETING"; exec sleep 1000']


def process_env(pid: int) -> dict[str, str]:
    """The environment the process really has (/proc/PID/environ), not what berthd says it gave."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if item)


def main_pid(daemon: Berthd, app: str) -> int:
    row = daemon.call(f"ps:report {app}").data[0]
    assert row["state"] == "RUNNING", row
    return int(row["pid"])


def test_config_set_restarts_a_running_app_with_the_new_env(berthd: Berthd) -> None:
    assert berthd.call(["apps:from-local", "greeter", *GREETER]).ok
    assert berthd.call("ps:start greeter").ok
    first = main_pid(berthd, "greeter")
    assert "GREETING" not in process_env(first)
    answer = berthd.call(["config:set", "greeter", "GREETING=hi there"])
    assert answer.ok, answer.output
    assert answer.data["restarted"] == ["main.1"]
    assert "Restarting greeter: main.1" in answer.output
    second = main_pid(berthd, "greeter")
    assert second != first
    assert process_env(second)["GREETING"] == "hi there"
    wait_for(lambda: "greeting-hi there" in berthd.call("logs greeter").output)
    # config:unset too
    unset = berthd.call("config:unset greeter GREETING")
    assert unset.ok and unset.data["restarted"] == ["main.1"]
    third = main_pid(berthd, "greeter")
    assert third != second and "GREETING" not in process_env(third)
    assert "hi there" not in berthd.log()


def test_no_restart_leaves_the_running_process_alone(berthd: Berthd) -> None:
    assert berthd.call(["apps:from-local", "steady", *GREETER]).ok
    assert berthd.call("ps:start steady").ok
    pid = main_pid(berthd, "steady")
    answer = berthd.call(["config:set", "steady", "GREETING=later", "--no-restart"])
    assert answer.ok and answer.data["restarted"] == []
    assert "--no-restart" in answer.output
    assert main_pid(berthd, "steady") == pid
    assert "GREETING" not in process_env(pid)
    assert berthd.call("config:unset steady GREETING --no-restart").data["restarted"] == []
    assert main_pid(berthd, "steady") == pid
    # the next restart takes it
    berthd.call(["config:set", "steady", "GREETING=now", "--no-restart"])
    assert berthd.call("ps:restart steady").ok
    assert process_env(main_pid(berthd, "steady"))["GREETING"] == "now"


def test_stopped_apps_stay_stopped(berthd: Berthd) -> None:
    assert berthd.call(["apps:from-local", "idle", *GREETER]).ok
    answer = berthd.call("config:set idle GREETING=x")
    assert answer.ok and answer.data["restarted"] == []
    assert berthd.call("ps:report idle").data == []
    assert berthd.call("ps:start idle").ok
    assert berthd.call("ps:stop idle").ok
    assert berthd.call("config:set idle GREETING=y").data["restarted"] == []
    assert [row["state"] for row in berthd.call("ps:report idle").data] == ["STOPPED"]


AWKWARD = {
    "QUOTE": "it's a 'test'",
    "LINES": "first\nsecond\n",
    "SHELLISH": '$HOME `id` $(id) \\ "double" ; & | > *',
    "EMPTY": "",
    "SPACES": "  lead and trail  ",
    "TAB": "a\tb",
    "UNICODE": "grüße ✓",
    "EQUALS": "x=y==z",
}


def test_config_export_is_read_back_by_sh_exactly(berthd: Berthd, tmp_path: Path) -> None:
    berthd.call("apps:create shelly")
    assert berthd.call(["config:set", "shelly", *(f"{k}={v}" for k, v in AWKWARD.items())]).ok
    answer = berthd.call("config:export shelly")
    assert answer.ok
    assert answer.output.splitlines()[0] == "export EMPTY=''"
    script = tmp_path / "exports.sh"
    script.write_text(answer.output + "\n")
    names = " ".join(AWKWARD)
    # each variable printed by the shell itself, NUL-terminated: newlines in values survive
    printed = subprocess.run(
        ["/bin/sh", "-c", f'. "$1" && for n in {names}; do eval "printf \'%s\\0\' \\"\\$$n\\""; done',
         "sh", str(script)],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert printed.decode().split("\0")[:-1] == list(AWKWARD.values())
    # exported: a child of that shell has them
    child = subprocess.run(
        ["/bin/sh", "-c", '. "$1" && exec env -0', "sh", str(script)],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=True,
    ).stdout  # fmt: skip
    seen = dict(item.split("=", 1) for item in child.decode().split("\0") if item)
    assert {k: seen[k] for k in AWKWARD} == AWKWARD
    assert "it's a" not in berthd.log() and "grüße" not in berthd.log()  # the answer holds secrets


def test_config_keys_and_show_quote_what_needs_it(berthd: Berthd) -> None:
    berthd.call("apps:create quoted")
    assert berthd.call(["config:set", "quoted", *(f"{k}={v}" for k, v in AWKWARD.items())]).ok
    keys = berthd.call("config:keys quoted")
    assert keys.ok and keys.output.splitlines() == sorted(AWKWARD) and keys.data == sorted(AWKWARD)
    show = berthd.call("config:show quoted")
    assert show.data == AWKWARD
    lines = show.output
    assert "EQUALS=x=y==z" in lines.splitlines()  # nothing to quote
    assert "SPACES='  lead and trail  '" in lines.splitlines()
    assert "EMPTY=''" in lines.splitlines()
    # as a whole, the shell's words again
    assert dict(word.split("=", 1) for word in shlex.split(lines)) == AWKWARD
    assert berthd.call("config:keys ghost").error == "not_found"
    assert berthd.call("config:export ghost").error == "not_found"


@pytest.mark.parametrize("command", ["config:set idle A=1 --no-restart", "config:unset idle A --no-restart"])
def test_no_restart_is_in_the_usage(berthd: Berthd, command: str) -> None:
    berthd.call("apps:create idle")
    assert berthd.call(command).ok
    assert "--no-restart" in berthd.call("config:help").output


# Image apps: the container's environment is fixed when it is made, so a change makes it anew.

IMAGE_GREETER = ["sh", "-c", 'echo "greeting-$GREETING"; exec sleep 1000']


def container_env(client: docker.DockerClient, app: str) -> dict[str, str]:
    env = client.api.inspect_container(f"nc_app_{app}")["Config"]["Env"]
    return dict(item.split("=", 1) for item in env)


def test_config_set_restarts_an_image_app_with_the_new_env(
    engine_berthd: Berthd,  # noqa: F811 - the fixture
    docker_client: docker.DockerClient,
) -> None:
    daemon = engine_berthd
    deploy(daemon, "img-greeter", command=IMAGE_GREETER)
    assert daemon.call("ps:start img-greeter").ok
    first = docker_client.api.inspect_container("nc_app_img-greeter")["Id"]
    answer = daemon.call("config:set img-greeter GREETING=hi")
    assert answer.ok and answer.data["restarted"] == ["main.1"], answer.output
    attrs = docker_client.api.inspect_container("nc_app_img-greeter")
    assert attrs["State"]["Status"] == "running" and attrs["Id"] != first
    assert container_env(docker_client, "img-greeter")["GREETING"] == "hi"
    assert daemon.call("ps:report img-greeter").data[0]["state"] == "RUNNING"
    wait_for(lambda: "greeting-hi" in daemon.call("logs img-greeter").output)
    # --no-restart: the same container, as it was
    assert daemon.call("config:set img-greeter GREETING=bye --no-restart").data["restarted"] == []
    assert docker_client.api.inspect_container("nc_app_img-greeter")["Id"] == attrs["Id"]
    assert container_env(docker_client, "img-greeter")["GREETING"] == "hi"
    # no change, no new container: ps:stop and ps:start start the same one again
    assert daemon.call("ps:restart img-greeter").ok
    again = docker_client.api.inspect_container("nc_app_img-greeter")["Id"]
    assert container_env(docker_client, "img-greeter")["GREETING"] == "bye"
    assert daemon.call("ps:stop img-greeter").ok and daemon.call("ps:start img-greeter").ok
    assert docker_client.api.inspect_container("nc_app_img-greeter")["Id"] == again


def test_a_process_starting_when_the_config_changes_starts_with_the_new_one(
    engine_berthd: Berthd,  # noqa: F811 - the fixture
    docker_client: docker.DockerClient,
) -> None:
    """A slow start: the container is healthy only once it made /tmp/ready, seconds after it started."""
    daemon = engine_berthd
    with_health_check(docker_client, "berth-test/slow-start:1", ["CMD", "test", "-f", "/tmp/ready"], 1000)
    slow = ["sh", "-c", 'echo "web-$GREETING"; sleep 5; touch /tmp/ready; exec sleep 1000']
    assert daemon.call(["git:from-image", "slow", "berth-test/slow-start:1", "--", *slow]).ok
    started = daemon.call("ps:start slow")  # waits 3 s for the start, which takes 5
    assert started.data[0]["state"] == "STARTING", started.output
    answer = daemon.call("config:set slow GREETING=hi --no-restart")
    assert answer.ok and answer.data["restarted"] == []
    wait_for(lambda: daemon.call("ps:report slow").data[0]["state"] == "RUNNING", timeout=30)
    assert container_env(docker_client, "slow")["GREETING"] == "hi"
    wait_for(lambda: "web-hi" in daemon.call("logs slow").output)
    assert daemon.call("config:get slow GREETING").output == "hi"
