"""What an app's process is launched with: its command per process type, environment and folder.

The environment is merged, never replaced: berthd's own environment (less berthd's private variables),
then the app's config, then what the source adds (Procfile assignments), then BERTH_* variables.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from berthd.errors import CommandError, invalid_argument
from berthd.runners.native.spawn import Identity, SpawnError
from berthd.sources.procfile import ProcessType
from berthd.store import modes
from berthd.store.records import AppRecord, Mount

PRIVATE_VARIABLES = re.compile(
    r"^(BERTHD_.*|LISTEN_(PID|FDS|FDNAMES)|NOTIFY_SOCKET|INVOCATION_ID|WATCHDOG_.*)$"
)
MAIN = "main"
PROCESS_NAME = re.compile(r"^(?P<type>[A-Za-z0-9][A-Za-z0-9_-]{0,62})\.(?P<index>[1-9][0-9]{0,3})$")


def base_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not PRIVATE_VARIABLES.match(k)}


@dataclass(frozen=True)
class ProcessCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def process_types(record: AppRecord) -> dict[str, ProcessCommand]:
    """Each process type of the app: the argv it runs and the environment its Procfile line adds."""
    if record.source.kind == "image":
        return {MAIN: ProcessCommand([])}  # one container, named for the app
    procfile = record.source.detail.get("procfile")
    if procfile:
        types = msgspec.json.decode(procfile, type=dict[str, ProcessType])
        # a Procfile line is the user's own shell command: it is the single argument of sh -c
        return {
            name: ProcessCommand(["/bin/sh", "-c", entry.command, *record.settings.args], entry.env)
            for name, entry in types.items()
        }
    if record.settings.executable:
        return {MAIN: ProcessCommand([record.settings.executable, *record.settings.args])}
    return {}


def default_scale(record: AppRecord) -> dict[str, int]:
    types = process_types(record)
    if MAIN in types:
        return {MAIN: 1}
    return {name: 1 if index == 0 else 0 for index, name in enumerate(types)}


def environment(
    record: AppRecord, config: dict[str, str], identity: Identity | None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = base_environment()
    env.update(config)
    env.update(extra or {})
    env["BERTH_APP"] = record.name
    if identity is not None:
        env.update({"HOME": identity.home, "USER": identity.user, "LOGNAME": identity.user})
    return env


def working_directory(record: AppRecord, app_dir: Path) -> str:
    if record.settings.cwd:
        return record.settings.cwd
    source_dir = record.source.detail.get("source_dir")
    return source_dir or str(app_dir)


def resolve_identity(spec: str | None) -> Identity | None:
    from berthd.runners.native.spawn import check_identity

    try:
        return check_identity(spec)
    except SpawnError as exc:
        raise invalid_argument(str(exc)) from None


def open_app_folders(record: AppRecord, app_dir: Path, cwd: str, executable: str | None) -> None:
    """The app's folder, and the folders on the way to its working directory and executable when they
    lie in it, opened to the app's group (see `berthd.store.modes`). When the app's user changed, what
    the app runs is handed to the new group."""
    gid = modes.app_group(record.settings.user)
    if app_dir.exists() and app_dir.stat().st_gid != gid:
        modes.fix_app_dir(app_dir, gid)
    else:
        modes.open_folder(app_dir, gid)
    for path in (Path(cwd), Path(executable).parent if executable else None):
        if path is not None and path.is_relative_to(app_dir) and path != app_dir:
            # through `current` (a link to a release) the folders are the release's, handed over at deploy
            first = app_dir / path.relative_to(app_dir).parts[0]
            if not first.is_symlink() and path.is_dir():
                modes.open_path(app_dir, path, gid)


def mount_directories(record: AppRecord, app_dir: Path, identity: Identity | None) -> dict[str, str]:
    """The MOUNT interfaces, as folders under the app's own folder (each its user's own, the folders
    above it berthd's and open to the app's group), and the variables naming them. The folders are
    made and handed over through directory descriptors (`modes.make_mount`), never by a path a link
    could redirect."""
    env: dict[str, str] = {}
    inputs: list[str] = []
    outputs: list[str] = []
    gid = modes.app_group(record.settings.user)
    owner = (identity.uid, identity.gid) if identity is not None else (os.geteuid(), gid)
    for mount in record.settings.mounts:
        parts = mount_parts(mount)
        try:
            modes.make_mount(app_dir, parts, gid, *owner)
        except modes.NotAFolder as exc:
            raise CommandError("invalid_argument", f"mount {mount.path}: {exc}") from None
        folder = str(app_dir.joinpath("mounts", *parts))
        (inputs if mount.function == "INPUT" else outputs).append(folder)
        env[f"BERTH_MOUNT_{_variable_part(mount.path)}"] = folder
    if inputs:
        env["BERTH_INPUT_DIR"] = inputs[0]
        env["BERTH_INPUT_DIRS"] = os.pathsep.join(inputs)
    if outputs:
        env["BERTH_OUTPUT_DIR"] = outputs[0]
        env["BERTH_OUTPUT_DIRS"] = os.pathsep.join(outputs)
    return env


def mount_parts(mount: Mount) -> tuple[str, ...]:
    """The folders of a mount's path, below the app's `mounts` folder."""
    parts = tuple(part for part in mount.path.split("/") if part)
    if not parts or any(part in (".", "..") for part in parts):
        raise CommandError("invalid_argument", f"mount {mount.path} leaves the app's folder")
    return parts


def _variable_part(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_").upper() or "ROOT"


def sanitise_args(args: list[str]) -> list[str]:
    """The seed's rule: arguments that are empty or only whitespace are dropped."""
    return [arg for arg in args if arg.strip()]
