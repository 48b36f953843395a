"""What an app's process is launched with: its command per process type, environment and folder.

The environment is built, never inherited: nothing of berthd's own environment reaches a child unless
berthd's config passes it on (`pass_env`). A child gets, each layer over the one before:

    PATH, LANG          DEFAULT_PATH and DEFAULT_LANG
    HOME, SHELL         from the account the process runs as (its --user, else berthd's)
    child_env           berthd's config: defaults for every app (PATH=..., LANG=...)
    pass_env            the variables of berthd's environment the config names (never BERTHD_*,
                        LISTEN_*, NOTIFY_SOCKET and the like: those are berthd's alone)
    the app's config    config:set
    the source's own    a Procfile line's leading assignments
    PORT                for a Procfile process type, unless one of the above set it: a free port
    USER, LOGNAME       the account's name, always (never what a layer above says)
    BERTH_*             BERTH_APP, BERTH_PROCESS, BERTH_JOB_*, BERTH_MOUNT_*, BERTH_INPUT/OUTPUT_DIR

The working directory, unless --cwd says otherwise: the checkout for git and archive apps, the
executable's folder for the others (the standalone-services seed's rule). A --cwd is either absolute,
inside the app's folder or a folder of the config's `cwd_roots` (or the executable's folder itself),
or relative to the app's code (the checkout, else the app's folder); it is checked when set and
again, links resolved, at every start.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import pwd
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from berthd.errors import CommandError, invalid_argument
from berthd.runners.native.spawn import Identity, SpawnError
from berthd.sources.caller import Caller, run_as
from berthd.sources.procfile import ProcessType
from berthd.store import modes
from berthd.store.records import AppRecord, AppSettings, Mount

PRIVATE_VARIABLES = re.compile(
    r"^(BERTHD_.*|LISTEN_(PID|FDS|FDNAMES)|NOTIFY_SOCKET|INVOCATION_ID|WATCHDOG_.*)\Z"
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_LANG = "C.UTF-8"  # in every glibc since 2.35 and in musl; a config or the app may say otherwise
MAIN = "main"
PROCESS_NAME = re.compile(r"^(?P<type>[A-Za-z0-9][A-Za-z0-9_-]{0,62})\.(?P<index>[1-9][0-9]{0,3})\Z")


@dataclass(frozen=True)
class ChildDefaults:
    """What berthd's config says of every child: the environment under the app's own (the built-in
    defaults, `child_env`, the `pass_env` variables as berthd had them at start), `cwd_roots` and
    `mount_roots`."""

    env: Mapping[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH, "LANG": DEFAULT_LANG})
    cwd_roots: tuple[str, ...] = ()
    mount_roots: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        child_env: Mapping[str, str],
        pass_env: Sequence[str],
        cwd_roots: Sequence[str],
        environ: Mapping[str, str],
        mount_roots: Sequence[str] = (),
    ) -> ChildDefaults:
        env = {"PATH": DEFAULT_PATH, "LANG": DEFAULT_LANG, **child_env}
        for name, value in environ.items():
            if not PRIVATE_VARIABLES.match(name) and any(fnmatch.fnmatchcase(name, p) for p in pass_env):
                env[name] = value
        absolute = [
            tuple(os.path.normpath(os.path.abspath(r)) for r in roots) for roots in (cwd_roots, mount_roots)
        ]
        return cls(env, absolute[0], absolute[1])


# Set once at start (`configure`), before any process is launched; the built-in defaults until then.
_defaults = ChildDefaults()


def configure(defaults: ChildDefaults) -> None:
    global _defaults  # noqa: PLW0603 - berthd's config, read by every launch, fixed after start
    _defaults = defaults


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
    """The child's whole environment, in the layers of this module's docstring (PORT and the BERTH_*
    variables of a process or a job are added by whoever knows them)."""
    user, home, shell = account(identity)
    env = {"HOME": home, "SHELL": shell, **_defaults.env}
    env.update(config)
    env.update(extra or {})
    env.update({"USER": user, "LOGNAME": user, "BERTH_APP": record.name})
    return env


def account(identity: Identity | None) -> tuple[str, str, str]:
    """The name, home and shell of the account a child runs as: its identity's, else berthd's own."""
    uid = identity.uid if identity is not None else os.geteuid()
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:  # an id without a passwd entry (berthd in a container run as a bare uid)
        return (identity.user if identity else str(uid)), (identity.home if identity else "/"), "/bin/sh"
    return entry.pw_name, entry.pw_dir or "/", entry.pw_shell or "/bin/sh"


def free_port(taken: set[int], preferred: int | None = None) -> int:
    """A TCP port free on every address now, not in `taken` (berthd's other processes' ports, which
    may not be bound yet); `preferred` (the port the process had before a restart) when it is free."""
    candidates = ([preferred] if preferred else []) + [0] * 16
    for candidate in candidates:
        with socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds it
            try:
                probe.bind(("", candidate))
            except OSError:
                continue
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port
    raise CommandError("unavailable", "no free TCP port for PORT")


def wants_port(record: AppRecord) -> bool:
    """PORT is Heroku's and foreman's convention for the process types of a Procfile."""
    return bool(record.source.detail.get("procfile")) and record.source.kind != "image"


def working_directory(record: AppRecord, app_dir: Path) -> str:
    """Where the process starts: its --cwd (confined, existing), else the checkout (git, archive),
    else the executable's folder, else the app's folder."""
    if record.settings.cwd:
        return check_cwd_allowed(record.settings, record.source.detail, app_dir, relative_too=True)
    source_dir = record.source.detail.get("source_dir")
    if source_dir:
        return source_dir
    if record.settings.executable:
        return os.path.dirname(record.settings.executable)
    return str(app_dir)


def check_cwd_allowed(
    settings: AppSettings, detail: Mapping[str, str], app_dir: Path, *, relative_too: bool
) -> str:
    """The absolute working directory of `settings.cwd`, refused unless it lies (links resolved) in
    the app's folder or a `cwd_roots` folder, or is the executable's folder, and exists. A relative one is
    taken from the app's code and checked only with `relative_too` (at start): when it is set, the
    code it lies in may not be deployed yet."""
    cwd = settings.cwd
    assert cwd is not None
    base = detail.get("source_dir") or str(app_dir)
    folder = os.path.normpath(os.path.join(base, cwd))
    if not os.path.isabs(cwd) and not relative_too:
        return folder
    real = os.path.realpath(folder)
    default = os.path.realpath(os.path.dirname(settings.executable)) if settings.executable else None
    roots = [str(app_dir), *_defaults.cwd_roots]
    if real != default and not any(_within(real, os.path.realpath(root)) for root in roots):
        raise invalid_argument(
            f"invalid cwd {cwd!r}: not in the app's folder or a configured cwd root (berthd's "
            "--cwd-root), nor the executable's folder"
        )
    if not os.path.isdir(real):
        raise invalid_argument(f"invalid cwd {cwd!r}: no such folder")
    return folder


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


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
            # through `current` (a link to a release) the folders are the release's, handed over at
            # deploy; under `mounts` they are made by `mount_directories`, the mounts their users' own
            first = app_dir / path.relative_to(app_dir).parts[0]
            if first.name != "mounts" and not first.is_symlink() and path.is_dir():
                modes.open_path(app_dir, path, gid)


def place_mount(mount: Mount) -> Mount:
    """Where a mount's folder is on this host. With berthd's `mount_roots`, the path itself, which must
    lie inside one of them (refused otherwise, the roots named); without, a folder under the app's own."""
    if not _defaults.mount_roots:
        return Mount(mount.path, mount.function)
    if _mount_root_of(mount.path) is None:
        raise invalid_argument(
            f"invalid mount {mount.path}: not inside a mount root; berthd's mount roots (--mount-root): "
            + ", ".join(_defaults.mount_roots)
        )
    return Mount(mount.path, mount.function, folder=mount.path)


def _mount_root_of(path: str) -> str | None:
    return next((root for root in _defaults.mount_roots if path.startswith(root.rstrip("/") + "/")), None)


def mount_folder(mount: Mount, app_dir: Path) -> str:
    """The folder on this host a mount is: its own path in a mount root, else under the app's folder."""
    return mount.folder or str(app_dir.joinpath("mounts", *mount_parts(mount)))


def make_mounts(settings: AppSettings, app_dir: Path, identity: Identity | None) -> list[tuple[Mount, str]]:
    """The MOUNT interfaces made where missing, each with its folder. Under the app's folder: each its
    user's own, the folders above it berthd's and open to the app's group (`modes.make_mount`). In a
    mount root (still one of berthd's): made by the app's user itself, with its rights
    (`modes.make_folders_below`). Both through directory descriptors, never by a path a link could
    redirect."""
    made: list[tuple[Mount, str]] = []
    gid = modes.app_group(settings.user)
    owner = (identity.uid, identity.gid) if identity is not None else (os.geteuid(), gid)
    if any(mount.folder is None for mount in settings.mounts) and not app_dir.exists():
        modes.open_folder(app_dir, gid)  # a new app: as its first start would make it
    for mount in settings.mounts:
        if mount.folder is None:
            try:
                modes.make_mount(app_dir, mount_parts(mount), gid, *owner)
            except modes.NotAFolder as exc:
                raise CommandError("invalid_argument", f"mount {mount.path}: {exc}") from None
        else:
            root = _mount_root_of(mount.folder)
            if root is None:
                raise invalid_argument(
                    f"mount {mount.path}: no longer inside one of berthd's mount roots ("
                    + (", ".join(_defaults.mount_roots) or "none")
                    + "): set the app's mounts again"
                )
            parts = tuple(Path(mount.folder).relative_to(root).parts)
            user = (
                Caller(identity.uid, identity.gid, identity.groups)
                if identity
                else Caller(os.geteuid(), gid, ())
            )
            why = run_as(user, functools.partial(modes.make_folders_below, root, parts))
            if why:
                raise invalid_argument(f"mount {mount.path}: {why}")
        made.append((mount, mount_folder(mount, app_dir)))
    return made


def mount_variables(mounts: Sequence[tuple[Mount, str]]) -> dict[str, str]:
    """The variables naming the mounts' folders, as the process sees them."""
    env: dict[str, str] = {}
    inputs = [folder for mount, folder in mounts if mount.function == "INPUT"]
    outputs = [folder for mount, folder in mounts if mount.function == "OUTPUT"]
    for mount, folder in mounts:
        env[f"BERTH_MOUNT_{_variable_part(mount.path)}"] = folder
    if inputs:
        env["BERTH_INPUT_DIR"] = inputs[0]
        env["BERTH_INPUT_DIRS"] = os.pathsep.join(inputs)
    if outputs:
        env["BERTH_OUTPUT_DIR"] = outputs[0]
        env["BERTH_OUTPUT_DIRS"] = os.pathsep.join(outputs)
    return env


def mount_directories(record: AppRecord, app_dir: Path, identity: Identity | None) -> dict[str, str]:
    """The mounts made (`make_mounts`) and the variables naming their folders on this host."""
    return mount_variables(make_mounts(record.settings, app_dir, identity))


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
