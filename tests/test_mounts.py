"""MOUNT interfaces (the standalone-services seed): the folder a mount really is, made when the app is
defined, shown in apps:info and in BERTH_INPUT_DIR/BERTH_OUTPUT_DIR; the path itself only inside
berthd's mount roots; never through a link; never where the caller could not go itself."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from berthd.config import load_config
from tests.daemon_proc import Berthd
from tests.docker_engine import BUSYBOX_IMAGE
from tests.test_access import ask
from tests.test_daemons import NC_URL, socket_path
from tests.test_docker_runner import deploy, engine_berthd, remove_containers_of  # noqa: F401 - the fixture
from tests.users import NEEDS_ROOT, User, system_users

SHOW_DIRS = ["/bin/sh", "--", "-c", 'echo "$BERTH_INPUT_DIR|$BERTH_OUTPUT_DIR"']


def run_output(daemon: Berthd, app: str) -> str:
    answer = daemon.call(f"run {app}")
    assert answer.ok, answer.output
    return (Path(answer.data["output_dir"]) / "stdout.txt").read_text().strip()


def shown_mounts(daemon: Berthd, app: str) -> dict[str, str]:
    return {m["path"]: m["folder"] for m in daemon.call(f"apps:info {app}").data["mounts"]}


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    folder = tmp_path / "roots"
    (folder / "data").mkdir(parents=True)
    return folder


def test_without_mount_roots_a_mount_is_under_the_apps_folder_made_when_defined(berthd: Berthd) -> None:
    mounts = ["--mount", "/data/input:INPUT", "--mount", "/data/output:OUTPUT"]
    answer = berthd.call(["apps:from-local", "seed", *mounts, *SHOW_DIRS])
    assert answer.ok, answer.output
    folders = berthd.data_dir / "apps" / "seed" / "mounts" / "data"
    inputs, outputs = folders / "input", folders / "output"
    assert inputs.is_dir() and outputs.is_dir()  # made now, not at the first run
    assert shown_mounts(berthd, "seed") == {"/data/input": str(inputs), "/data/output": str(outputs)}
    info = berthd.call("apps:info seed").output
    assert f"Mount /data/input:  {inputs} (INPUT)" in info
    assert run_output(berthd, "seed") == f"{inputs}|{outputs}"
    # apps:set too
    assert berthd.call(["apps:set", "seed", "mount", "/results:OUTPUT"]).ok
    assert (berthd.data_dir / "apps" / "seed" / "mounts" / "results").is_dir()
    assert run_output(berthd, "seed") == f"|{berthd.data_dir / 'apps' / 'seed' / 'mounts' / 'results'}"


def test_inside_a_mount_root_a_mount_is_the_path_itself(
    start_berthd: Callable[..., Berthd], roots: Path
) -> None:
    daemon = start_berthd(extra_args=["--mount-root", str(roots)])
    inputs, outputs = roots / "data" / "input", roots / "data" / "deep" / "output"
    answer = daemon.call(
        [
            "apps:from-local",
            "rooted",
            "--mount",
            f"{inputs}:INPUT",
            "--mount",
            f"{outputs}:OUTPUT",
            *SHOW_DIRS,
        ]
    )
    assert answer.ok, answer.output
    assert inputs.is_dir() and outputs.is_dir()
    assert shown_mounts(daemon, "rooted") == {str(inputs): str(inputs), str(outputs): str(outputs)}
    assert run_output(daemon, "rooted") == f"{inputs}|{outputs}"
    assert not (daemon.data_dir / "apps" / "rooted" / "mounts").exists()


def test_a_mount_outside_the_mount_roots_is_refused_with_the_roots_named(
    start_berthd: Callable[..., Berthd], roots: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-root"
    daemon = start_berthd(extra_args=["--mount-root", str(roots), "--mount-root", str(other)])
    for path in ("/data/input", str(tmp_path / "roots-sibling" / "x"), str(roots)):
        answer = daemon.call(["apps:from-local", "outside", "/bin/true", "--mount", f"{path}:INPUT"])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), path
        assert f"invalid mount {path}: not inside a mount root" in answer.output
        assert f"{roots}, {other}" in answer.output
    assert not Path("/data/input").exists() or not (Path("/data/input") / "outside").exists()
    assert daemon.call("apps:list").data == []
    daemon.call("apps:create kept")
    refused = daemon.call(["apps:set", "kept", "mount", "/data/input:INPUT"])
    assert refused.error == "invalid_argument" and str(roots) in refused.output


def test_a_link_planted_in_a_mount_root_is_never_followed(
    start_berthd: Callable[..., Berthd], roots: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (roots / "data" / "link").symlink_to(target)
    daemon = start_berthd(extra_args=["--mount-root", str(roots)])
    for mount in (f"{roots}/data/link:INPUT", f"{roots}/data/link/inner:OUTPUT"):
        answer = daemon.call(["apps:from-local", "linked", "/bin/true", "--mount", mount])
        assert (answer.ok, answer.error) == (False, "invalid_argument"), mount
        assert "link is not a folder (a link or a file): refused" in answer.output
    assert list(target.iterdir()) == []
    assert daemon.call("apps:list").data == []
    # planted after the app was defined: its start refuses too
    assert daemon.call(["apps:from-local", "later", "/bin/true", "--mount", f"{roots}/data/later:INPUT"]).ok
    (roots / "data" / "later").rmdir()
    (roots / "data" / "later").symlink_to(target)
    ran = daemon.call("run later")
    assert not ran.ok and "later is not a folder (a link or a file): refused" in ran.output
    assert list(target.iterdir()) == []


def test_mount_roots_from_the_environment_and_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "berthd.toml").write_text('mount_roots = ["srv", "/data"]\n')
    config = load_config("etc/berthd.toml", {}, {}, cwd=str(tmp_path))
    assert config.mount_roots == [str(tmp_path / "etc" / "srv"), "/data"]
    config = load_config(None, {"BERTHD_MOUNT_ROOTS": "a:/b"}, {}, cwd=str(tmp_path))
    assert config.mount_roots == [str(tmp_path / "a"), "/b"]
    flags = load_config(None, {"BERTHD_MOUNT_ROOTS": "a"}, {"mount_roots": ["c"]}, cwd=str(tmp_path))
    assert flags.mount_roots == [str(tmp_path / "c")]


# callers other than root


@pytest.fixture(scope="module")
def caller() -> Iterator[User]:
    with system_users("bmnta") as (alice,):
        yield alice


@NEEDS_ROOT
def test_a_caller_gets_mounts_only_where_it_could_go_itself(
    start_berthd: Callable[..., Berthd], reachable_tmp: Path, caller: User
) -> None:
    roots = reachable_tmp / "roots"
    (roots / "private").mkdir(parents=True)
    (roots / "private").chmod(0o700)  # root's: the caller may not enter it
    (roots / "shared").mkdir(mode=0o777)
    (roots / "shared").chmod(0o1777)
    roots.chmod(0o755)
    daemon = start_berthd(
        "callers", root=reachable_tmp, extra_args=["--socket-mode", "0666", "--mount-root", str(roots)]
    )
    own, theirs, as_root = ask(
        daemon,
        caller,
        f"apps:from-local mine /bin/true --mount {roots}/shared/mine:OUTPUT",
        f"apps:from-local theirs /bin/true --mount {roots}/private/x:OUTPUT --user root",
        f"apps:from-local high /bin/true --mount {roots}/top:OUTPUT",
    )
    # made by the app's user (the caller): its own
    assert own["ok"], own
    assert (roots / "shared" / "mine").stat().st_uid == caller.uid
    # an app that runs as root, but the caller may not reach the folder: nothing made there
    assert (theirs["ok"], theirs["error"]) == (False, "invalid_argument"), theirs
    assert "you may not reach it" in theirs["output"]
    assert list((roots / "private").iterdir()) == []
    # the caller's app may not write in the root itself
    assert (as_root["ok"], as_root["error"]) == (False, "invalid_argument"), as_root
    assert "cannot make top: Permission denied" in as_root["output"]
    assert not (roots / "top").exists()
    assert os.stat(roots).st_uid == 0


# image apps: the same folders, bound into the container at the path the user gave


def test_an_image_app_binds_its_mounts_and_nothing_outside_the_roots(
    start_berthd: Callable[..., Berthd],
    engine_berthd: Berthd,  # noqa: F811 - the fixture
    docker_client: docker.DockerClient,
) -> None:
    daemon = engine_berthd
    command = ["sh", "-c", 'echo "dirs $BERTH_INPUT_DIR $BERTH_OUTPUT_DIR" && exec sleep 1000']
    deploy(daemon, "bound", "--mount", "/data/input:INPUT", "--mount", "/data/output:OUTPUT", command=command)
    assert daemon.call("ps:start bound").ok
    attrs = docker_client.api.inspect_container("nc_app_bound")
    binds = {m["Destination"]: m["Source"] for m in attrs["Mounts"] if m["Type"] == "bind"}
    folders = daemon.data_dir / "apps" / "bound" / "mounts" / "data"
    assert binds == {"/data/input": str(folders / "input"), "/data/output": str(folders / "output")}
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert (env["BERTH_INPUT_DIR"], env["BERTH_OUTPUT_DIR"]) == ("/data/input", "/data/output")
    refused = daemon.call(["apps:set", "bound", "mount", "/etc:INPUT"])
    assert refused.ok  # without mount roots: a folder under the app's, never /etc itself
    assert daemon.call("ps:restart bound").ok
    attrs = docker_client.api.inspect_container("nc_app_bound")
    binds = {m["Destination"]: m["Source"] for m in attrs["Mounts"] if m["Type"] == "bind"}
    assert binds == {"/etc": str(daemon.data_dir / "apps" / "bound" / "mounts" / "etc")}


def test_an_image_app_binds_only_inside_the_mount_roots(
    start_berthd: Callable[..., Berthd], docker_host: str, docker_client: docker.DockerClient, roots: Path
) -> None:
    daemon = start_berthd("rooted", extra_args=["--stop-timeout", "1", "--mount-root", str(roots)])
    register = [
        "daemons:register",
        "local",
        "Local",
        "docker-install",
        "http",
        socket_path(docker_host),
        NC_URL,
    ]
    assert daemon.call([*register, "--set-default"]).ok
    try:
        for path in ("/etc", "/", "/var/run/docker.sock", f"{roots}/../escape"):
            refused = daemon.call(["git:from-image", "escape", BUSYBOX_IMAGE, "--mount", f"{path}:INPUT"])
            assert refused.error == "invalid_argument", (path, refused.output)
        assert not docker_client.containers.list(all=True, filters={"name": "^/nc_app_escape$"})
        inside = roots / "data" / "in"
        deploy(daemon, "inroot", "--mount", f"{inside}:INPUT", command=["sleep", "1000"])
        assert daemon.call("ps:start inroot").ok
        attrs = docker_client.api.inspect_container("nc_app_inroot")
        assert [(m["Source"], m["Destination"]) for m in attrs["Mounts"] if m["Type"] == "bind"] == [
            (str(inside), str(inside))
        ]
        assert inside.is_dir()
    finally:
        remove_containers_of(daemon, docker_client)
