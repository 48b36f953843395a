"""berthd's configuration: defaults, then an optional TOML file, then `BERTHD_*` variables, then flags.

Every path is made absolute once, here, before berthd uses any: a relative path from a flag or a
variable is taken from the folder berthd was started in, one from the TOML file from the file's own
folder. berthd stores and hands out only absolute paths, so what it records (an executable, a job's
folder) means the same to every process, whatever folder that process is in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from berth.paths import default_socket_path
from berthd.access.rules import AccessSpec, line_of_rule

MIB = 1024 * 1024
METRICS_ADDRESS = r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):[0-9]{1,5}$"


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    socket: str | None = None
    socket_mode: str = "0660"
    socket_group: str | None = None
    max_line: Annotated[int, msgspec.Meta(ge=64)] = 2 * MIB  # the seed's 1 MiB upload chunk fits in base64
    max_clients: Annotated[int, msgspec.Meta(ge=1)] = 256
    max_clients_per_uid: Annotated[int, msgspec.Meta(ge=1)] | None = None  # None: a quarter of max_clients
    idle_timeout: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    commands_per_second_per_uid: Annotated[float, msgspec.Meta(gt=0)] = 100.0  # root's are not counted
    command_burst_per_uid: Annotated[int, msgspec.Meta(ge=1)] = 200
    log_file: str | None = None
    log_file_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 10 * MIB
    log_file_backups: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    audit_log: str | None = None  # None: DATA_DIR/audit.log; AUDIT_OFF: no audit log
    audit_log_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 10 * MIB
    audit_log_backups: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    data_dir: str | None = None
    sync: Literal["full", "normal"] = "full"
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    stop_timeout: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    log_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 10 * MIB
    log_backups: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    upload_ttl: Annotated[float, msgspec.Meta(gt=0)] = 24 * 3600.0
    max_upload_bytes: Annotated[int, msgspec.Meta(ge=1)] = 4 * 1024 * MIB
    max_archive_bytes: Annotated[int, msgspec.Meta(ge=1)] = 512 * MIB
    max_unpacked_bytes: Annotated[int, msgspec.Meta(ge=1)] = 2 * 1024 * MIB
    job_output_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * MIB
    jobs_keep: Annotated[int, msgspec.Meta(ge=1)] = 100
    jobs_max_age: Annotated[float, msgspec.Meta(gt=0)] = 30 * 24 * 3600.0
    max_uploads_per_app: Annotated[int, msgspec.Meta(ge=1)] = 16
    max_uploads: Annotated[int, msgspec.Meta(ge=1)] = 128
    max_uploads_per_uid: Annotated[int, msgspec.Meta(ge=1)] | None = None  # None: a quarter of max_uploads
    download_timeout: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    # the children's environment (see berthd.apps.launch): defaults under the app's config, and the
    # variables of berthd's own environment passed on (names, or NAME* patterns)
    child_env: dict[str, str] = msgspec.field(default_factory=dict)
    pass_env: list[str] = msgspec.field(default_factory=list)
    # folders outside an app's own where its --cwd may point
    cwd_roots: list[str] = msgspec.field(default_factory=list)
    # folders where a --mount may be the path it names (none: every mount is under the app's folder)
    mount_roots: list[str] = msgspec.field(default_factory=list)
    # ADDR:PORT ([IPV6]:PORT) of the HTTP metrics page; None: none
    metrics_listen: Annotated[str, msgspec.Meta(pattern=METRICS_ADDRESS)] | None = None
    # who may do what (see berthd.access.rules); read from the TOML file only
    access: AccessSpec = msgspec.field(default_factory=AccessSpec)

    def apply_live(self, new: Config) -> list[str]:
        """Take `new`'s values of the settings that can change while berthd runs (on SIGHUP); the names
        of those that changed but take a restart."""
        later = []
        for name in self.__struct_fields__:
            old_value, new_value = getattr(self, name), getattr(new, name)
            if old_value == new_value:
                continue
            if name in RESTART_ONLY:
                later.append(name)
            else:
                setattr(self, name, new_value)
        return later

    @property
    def per_uid_clients(self) -> int:
        """How many connections one uid other than root may hold: never all of them."""
        if self.max_clients_per_uid is not None:
            return self.max_clients_per_uid
        return max(1, self.max_clients // 4)

    @property
    def per_uid_uploads(self) -> int:
        """How many unfinished uploads one uid other than root may hold: never all of them."""
        if self.max_uploads_per_uid is not None:
            return self.max_uploads_per_uid
        return max(1, self.max_uploads // 4)

    @property
    def socket_mode_bits(self) -> int:
        return int(self.socket_mode, 8)

    def socket_path(self) -> Path:
        return Path(self.socket) if self.socket else Path(os.path.abspath(default_socket_path()))

    def data_path(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir)
        if os.geteuid() == 0:
            return Path("/var/lib/berthd")
        xdg = os.environ.get("XDG_DATA_HOME", "")
        if not os.path.isabs(xdg):  # the XDG rule: a relative value is ignored
            xdg = str(Path.home() / ".local" / "share")
        return Path(os.path.abspath(xdg)) / "berthd"

    def audit_path(self) -> Path | None:
        """Where the audit log goes, or None when it is off."""
        if self.audit_log == AUDIT_OFF:
            return None
        return Path(self.audit_log) if self.audit_log else self.data_path() / "audit.log"


AUDIT_OFF = "off"  # `--audit-log off`: no audit log (a file called off is `./off`)
PATH_SETTINGS = ("socket", "log_file", "data_dir", "audit_log")  # one path each
OFF_SWITCHES = {"audit_log": AUDIT_OFF}  # path settings with a word that is no path
# what berthd sets up once, at start: a new value is reported on SIGHUP, and taken at the next start
RESTART_ONLY = frozenset(
    {
        "socket",
        "socket_mode",
        "socket_group",
        "data_dir",
        "sync",
        "log_file",
        "log_file_max_bytes",
        "log_file_backups",
        "audit_log",
        "audit_log_max_bytes",
        "audit_log_backups",
        "child_env",
        "pass_env",
        "cwd_roots",
        "mount_roots",
        "metrics_listen",
    }
)
PATH_LIST_SETTINGS = ("cwd_roots", "mount_roots")
# list settings given as one environment variable: how its items are separated
LIST_SEPARATORS = {"pass_env": ",", "cwd_roots": os.pathsep, "mount_roots": os.pathsep}


# Environment variables: the two that dokku-daemon users know, and one per other setting.
ENVIRONMENT = {
    "BERTHD_SOCK_PATH": "socket",
    "BERTHD_LOGFILE": "log_file",
    "BERTHD_SOCKET_MODE": "socket_mode",
    "BERTHD_SOCKET_GROUP": "socket_group",
    "BERTHD_MAX_LINE": "max_line",
    "BERTHD_MAX_CLIENTS": "max_clients",
    "BERTHD_MAX_CLIENTS_PER_UID": "max_clients_per_uid",
    "BERTHD_IDLE_TIMEOUT": "idle_timeout",
    "BERTHD_COMMANDS_PER_SECOND_PER_UID": "commands_per_second_per_uid",
    "BERTHD_COMMAND_BURST_PER_UID": "command_burst_per_uid",
    "BERTHD_LOG_FILE_MAX_BYTES": "log_file_max_bytes",
    "BERTHD_LOG_FILE_BACKUPS": "log_file_backups",
    "BERTHD_LOG_LEVEL": "log_level",
    "BERTHD_AUDIT_LOG": "audit_log",
    "BERTHD_AUDIT_LOG_MAX_BYTES": "audit_log_max_bytes",
    "BERTHD_AUDIT_LOG_BACKUPS": "audit_log_backups",
    "BERTHD_DATA_DIR": "data_dir",
    "BERTHD_SYNC": "sync",
    "BERTHD_SHUTDOWN_GRACE": "shutdown_grace",
    "BERTHD_STOP_TIMEOUT": "stop_timeout",
    "BERTHD_LOG_MAX_BYTES": "log_max_bytes",
    "BERTHD_LOG_BACKUPS": "log_backups",
    "BERTHD_UPLOAD_TTL": "upload_ttl",
    "BERTHD_MAX_UPLOAD_BYTES": "max_upload_bytes",
    "BERTHD_MAX_ARCHIVE_BYTES": "max_archive_bytes",
    "BERTHD_MAX_UNPACKED_BYTES": "max_unpacked_bytes",
    "BERTHD_JOB_OUTPUT_MAX_BYTES": "job_output_max_bytes",
    "BERTHD_JOBS_KEEP": "jobs_keep",
    "BERTHD_JOBS_MAX_AGE": "jobs_max_age",
    "BERTHD_MAX_UPLOADS_PER_APP": "max_uploads_per_app",
    "BERTHD_MAX_UPLOADS": "max_uploads",
    "BERTHD_MAX_UPLOADS_PER_UID": "max_uploads_per_uid",
    "BERTHD_DOWNLOAD_TIMEOUT": "download_timeout",
    "BERTHD_PASS_ENV": "pass_env",
    "BERTHD_CWD_ROOTS": "cwd_roots",
    "BERTHD_MOUNT_ROOTS": "mount_roots",
    "BERTHD_METRICS_LISTEN": "metrics_listen",
}


class ConfigError(Exception):
    pass


def load_config(
    config_file: str | None, environ: Mapping[str, str], flags: Mapping[str, Any], cwd: str | None = None
) -> Config:
    """The settings, every path in them absolute (`cwd`: where relative flags and variables start,
    by default the current folder)."""
    start = os.path.abspath(cwd or os.getcwd())
    values: dict[str, Any] = {}
    text = ""
    if config_file:
        try:
            text = Path(start, config_file).read_text()
            from_file = msgspec.toml.decode(text)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from None
        folder = os.path.dirname(os.path.join(start, config_file))
        values.update(_absolute_paths(from_file, folder))
        access = from_file.get("access")
        if isinstance(access, dict) and isinstance(access.get("file"), str):
            values["access"] = {**access, "file": os.path.normpath(os.path.join(folder, access["file"]))}
    from_environment: dict[str, Any] = {}
    for variable, key in ENVIRONMENT.items():
        if environ.get(variable):
            value = environ[variable]
            separator = LIST_SEPARATORS.get(key)
            from_environment[key] = [v for v in value.split(separator) if v] if separator else value
    values.update(_absolute_paths(from_environment, start))
    values.update(_absolute_paths({k: v for k, v in flags.items() if v is not None}, start))
    try:
        config = msgspec.convert(values, Config, strict=False)
        config.socket_mode_bits  # noqa: B018 - validates the octal mode
    except msgspec.ValidationError as exc:
        message = str(exc)
        if config_file and "access" in message:
            message = f"config file {config_file}: {line_of_rule(text, message)}"
        raise ConfigError(message) from None
    except ValueError:
        raise ConfigError(f"socket mode {values.get('socket_mode')!r} is not an octal mode") from None
    return config


def _absolute_paths(values: dict[str, Any], start: str) -> dict[str, Any]:
    """`values` with each path setting made absolute from `start` (and normalised); the rest as given,
    for the type check to judge."""
    absolute = dict(values)
    for key in PATH_SETTINGS:
        if isinstance(values.get(key), str) and values[key] and values[key] != OFF_SWITCHES.get(key):
            absolute[key] = os.path.normpath(os.path.join(start, values[key]))
    for key in PATH_LIST_SETTINGS:
        if isinstance(values.get(key), list):
            absolute[key] = [
                os.path.normpath(os.path.join(start, v)) if isinstance(v, str) else v for v in values[key]
            ]
    return absolute
