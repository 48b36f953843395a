"""`apps:set APP KEY VALUE`: one validated change to an app's settings. An empty VALUE unsets the key."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
from collections.abc import Callable

import msgspec

from berthd.apps.launch import place_mount
from berthd.errors import invalid_argument
from berthd.host.requirements import parse_requirement
from berthd.store.records import AppSettings, Mount

SETTING_KEYS = (
    "args",
    "cwd",
    "timeout",
    "user",
    "description",
    "daemon",
    "executable",
    "restart-policy",
    "require.<capability>",
    "mount",
)

RESTART_POLICY = re.compile(r"^(no|always|on-failure(:[1-9][0-9]{0,5})?)\Z")
USER_SPEC = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?\Z")
DAEMON_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,255}\Z")
MAX_DESCRIPTION = 4096


def check_executable(path: str) -> str:
    """An executable on this host: absolute, existing, a regular file, executable by berthd."""
    if not os.path.isabs(path):
        raise invalid_argument(f"invalid executable {path!r}: the path must be absolute")
    if not os.path.exists(path):
        raise invalid_argument(f"invalid executable {path!r}: no such file")
    if os.path.isdir(path):
        raise invalid_argument(f"invalid executable {path!r}: is a directory")
    if not os.path.isfile(path):
        raise invalid_argument(f"invalid executable {path!r}: not a regular file")
    if not os.access(path, os.X_OK):
        raise invalid_argument(f"invalid executable {path!r}: permission denied")
    return os.path.normpath(path)


def check_user(spec: str) -> str:
    """`USER[:GROUP]`, each a name or a numeric id (a name first, as chown reads them), both of which
    must exist on this host. Kept as names (`65534:65534` is `nobody:nogroup`): the account gives the
    process its HOME and USER, and everything that switches to it looks it up by name."""
    if not USER_SPEC.match(spec):
        raise invalid_argument(f"invalid user {spec!r}: expected USER or USER:GROUP (names or ids)")
    user, _, group = spec.partition(":")
    name = _name_of(user, lambda n: pwd.getpwnam(n).pw_name, lambda i: pwd.getpwuid(i).pw_name)
    if name is None and user.isdigit() and group.isdigit():
        return f"{int(user)}:{int(group)}"  # ids the host has no account for (a container's user)
    if name is None:
        raise invalid_argument(
            f"invalid user {spec!r}: no user {user!r} on this host (ids without an account: UID:GID)"
        )
    if not group:
        return name
    group_name = _name_of(group, lambda n: grp.getgrnam(n).gr_name, lambda i: grp.getgrgid(i).gr_name)
    if group_name is None:
        raise invalid_argument(f"invalid user {spec!r}: no group {group!r} on this host")
    return f"{name}:{group_name}"


def _name_of(text: str, by_name: Callable[[str], str], by_id: Callable[[int], str]) -> str | None:
    """The account's (or group's) name: `text` as a name, else as a numeric id; None when neither."""
    try:
        return by_name(text)
    except KeyError:
        pass
    try:
        return by_id(int(text)) if text.isdigit() else None
    except (KeyError, OverflowError):
        return None


def check_restart_policy(value: str) -> str:
    if not RESTART_POLICY.match(value):
        raise invalid_argument(f"invalid restart-policy {value!r}: expected no, on-failure[:N] or always")
    return value


def check_timeout(value: str | int) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise invalid_argument(f"invalid timeout {value!r}: expected whole seconds") from None
    if seconds <= 0:
        raise invalid_argument(f"invalid timeout {value!r}: must be at least 1 second")
    return seconds


def check_cwd(value: str) -> str:
    """An absolute folder, or one relative to the app's code (the checkout, else the app's folder)
    that stays inside it. Where an absolute one may lie, and that it exists, is
    `berthd.apps.launch.check_cwd_allowed`'s to say (it needs the app's folder)."""
    if "\x00" in value:
        raise invalid_argument("invalid cwd: contains a NUL byte")
    folder = os.path.normpath(value)
    if not os.path.isabs(folder) and (folder == ".." or folder.startswith("../")):
        raise invalid_argument(f"invalid cwd {value!r}: leaves the app's folder")
    return folder


def check_mount(value: str) -> Mount:
    path, sep, function = value.rpartition(":")
    if not sep or function not in ("INPUT", "OUTPUT"):
        raise invalid_argument(f"invalid mount {value!r}: expected PATH:INPUT or PATH:OUTPUT")
    if not os.path.isabs(path):
        raise invalid_argument(f"invalid mount {value!r}: the path must be absolute")
    if os.path.normpath(path) in ("/", "//"):
        raise invalid_argument(f"invalid mount {value!r}: give a folder, not /")
    return place_mount(Mount(os.path.normpath(path), "INPUT" if function == "INPUT" else "OUTPUT"))


def _args(settings: AppSettings, value: str) -> AppSettings:
    try:
        args = shlex.split(value)
    except ValueError as exc:
        raise invalid_argument(f"invalid args: {exc}") from None
    return msgspec.structs.replace(settings, args=args)


def _description(settings: AppSettings, value: str) -> AppSettings:
    if len(value) > MAX_DESCRIPTION:
        raise invalid_argument(f"invalid description: longer than {MAX_DESCRIPTION} characters")
    return msgspec.structs.replace(settings, description=value)


def _daemon(settings: AppSettings, value: str) -> AppSettings:
    if not DAEMON_NAME.match(value):
        raise invalid_argument(f"invalid daemon {value!r}: a name without control characters")
    return msgspec.structs.replace(settings, daemon=value)


def _mounts(settings: AppSettings, value: str) -> AppSettings:
    mounts = [check_mount(item.strip()) for item in value.split(",") if item.strip()]
    paths = [m.path for m in mounts]
    if len(set(paths)) != len(paths):
        raise invalid_argument("invalid mount: a path is given twice")
    return msgspec.structs.replace(settings, mounts=mounts)


SETTERS: dict[str, Callable[[AppSettings, str], AppSettings]] = {
    "args": _args,
    "cwd": lambda s, v: msgspec.structs.replace(s, cwd=check_cwd(v)),
    "timeout": lambda s, v: msgspec.structs.replace(s, timeout=check_timeout(v)),
    "user": lambda s, v: msgspec.structs.replace(s, user=check_user(v)),
    "description": _description,
    "daemon": _daemon,
    "executable": lambda s, v: msgspec.structs.replace(s, executable=check_executable(v)),
    "restart-policy": lambda s, v: msgspec.structs.replace(s, restart_policy=check_restart_policy(v)),
    "mount": _mounts,
}

UNSET_FIELD = {"restart-policy": "restart_policy", "mount": "mounts"}


def apply_setting(settings: AppSettings, key: str, value: str) -> AppSettings:
    if key.startswith("require."):
        requirement = key.removeprefix("require.")
        requirements = dict(settings.requirements)
        if value == "":
            requirements.pop(requirement, None)
        else:
            name, normalised = parse_requirement(requirement, value)
            requirements[name] = normalised
        return msgspec.structs.replace(settings, requirements=requirements)
    setter = SETTERS.get(key)
    if setter is None:
        raise invalid_argument(f"unknown setting {key!r}; known: {', '.join(SETTING_KEYS)}")
    if value == "":
        field = UNSET_FIELD.get(key, key)
        default = AppSettings()
        return msgspec.structs.replace(settings, **{field: getattr(default, field)})
    return setter(settings, value)


def describe_settings(settings: AppSettings) -> list[tuple[str, str]]:
    """The settings as (key, value) pairs for people, in `apps:set` vocabulary."""
    rows = [
        ("args", shlex.join(settings.args) if settings.args else ""),
        ("cwd", settings.cwd or ""),
        ("timeout", str(settings.timeout) if settings.timeout else ""),
        ("user", settings.user or ""),
        ("description", settings.description or ""),
        ("daemon", settings.daemon or ""),
        ("executable", settings.executable or ""),
        ("restart-policy", settings.restart_policy or ""),
        ("mount", ",".join(f"{m.path}:{m.function}" for m in settings.mounts)),
    ]
    rows += [(f"require.{k}", v) for k, v in sorted(settings.requirements.items())]
    return rows


ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def check_variable_name(key: str) -> str:
    if not ENV_KEY.match(key):
        raise invalid_argument(
            f"invalid variable name {key!r}: letters, digits and _, not starting with a digit"
        )
    return key


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` words. A refusal names the pair by its position: the word may be a secret given
    without its `KEY=` (`config:set APP S3CRET`), so it is never quoted."""
    values: dict[str, str] = {}
    for position, pair in enumerate(pairs, start=1):
        key, sep, value = pair.partition("=")
        if not sep:
            raise invalid_argument(f"invalid pair {position}: expected KEY=VALUE (the word is not shown)")
        if not ENV_KEY.match(key):
            raise invalid_argument(
                f"invalid variable name in pair {position}: letters, digits and _, not starting with a digit"
            )
        if "\x00" in value:
            raise invalid_argument(f"invalid value for {key}: contains a NUL byte")
        values[key] = value
    return values
