"""What the store keeps, as msgspec types: the settings columns are these structs encoded as JSON."""

from __future__ import annotations

from typing import Literal

import msgspec


class Mount(msgspec.Struct, frozen=True, omit_defaults=True):
    path: str
    function: Literal["INPUT", "OUTPUT"]
    # the folder on this host when it is the path itself, in one of berthd's mount roots; None: a folder
    # under the app's own (`berthd.apps.launch.mount_folder`)
    folder: str | None = None


class AppSettings(msgspec.Struct, omit_defaults=True):
    args: list[str] = msgspec.field(default_factory=list)
    cwd: str | None = None
    timeout: int | None = None
    user: str | None = None
    description: str | None = None
    daemon: str | None = None
    executable: str | None = None
    restart_policy: str | None = None
    requirements: dict[str, str] = msgspec.field(default_factory=dict)
    mounts: list[Mount] = msgspec.field(default_factory=list)


class AppSource(msgspec.Struct, omit_defaults=True):
    """Where the app's code came from: none yet, a local executable, an upload, git, an archive, an image."""

    kind: str = "none"
    detail: dict[str, str] = msgspec.field(default_factory=dict)


class AppRecord(msgspec.Struct):
    name: str
    created_at: float
    settings: AppSettings
    source: AppSource


class JobRecord(msgspec.Struct):
    """One execution of `run`: what ran, how it ended, where its output is."""

    id: str
    app: str
    argv: list[str]
    started_at: float
    output_dir: str
    state: str = "running"  # running, finished, timed_out, failed
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    duration_s: float | None = None
    error: str | None = None
    truncated: bool = False  # output over the job's limit was not kept
    dropped_bytes: int = 0  # how much


class UploadRecord(msgspec.Struct):
    id: str
    app: str
    filename: str  # in a group: the file's path relative to the release
    total_size: int
    total_chunks: int
    sha256: str | None
    received: bytes  # one bit a chunk
    created_at: float
    options: bytes  # the source options given at upload:begin, applied at upload:end
    uid: int = 0  # who began it (SO_PEERCRED)
    chunk_size: int | None = None  # every chunk's but the last; None until the first chunk says
    group: str | None = None  # an upload group: several files of one app, live together
    file_index: int | None = None
    total_files: int | None = None
    executable: bool = False  # the group's file that runs
    ended_hash: str | None = None  # the sha256 of a group's file that ended, waiting for the others

    @property
    def last_index(self) -> int:
        return self.total_chunks - 1

    def last_length(self, chunk_size: int) -> int:
        """What the last chunk holds: the rest (more than `chunk_size` too, as the seed's own example has)."""
        return self.total_size - self.last_index * chunk_size

    def chunk_length(self, index: int) -> int | None:
        """The length chunk `index` must have; None while the chunk size is still to be learnt."""
        if self.chunk_size is None:
            return None
        return self.last_length(self.chunk_size) if index == self.last_index else self.chunk_size

    def has(self, index: int) -> bool:
        return bool(self.received[index // 8] & (1 << (index % 8)))

    def received_indexes(self) -> list[int]:
        return [i for i in range(self.total_chunks) if self.has(i)]

    def missing_indexes(self) -> list[int]:
        return [i for i in range(self.total_chunks) if not self.has(i)]


class ComputeDevice(msgspec.Struct, frozen=True):
    """The GPU a daemon's containers get: `cpu`, `cuda` or `rocm`, with AppAPI's label."""

    id: str = "cpu"
    label: str = "CPU"


class HarpConfig(msgspec.Struct, frozen=True):
    """A daemon reached through HaRP: its FRP server, the shared key, the remote Docker socket port."""

    frp_address: str
    shared_key: str
    docker_socket_port: str = "24000"
    exapp_direct: bool = False


class KubernetesConfig(msgspec.Struct, frozen=True):
    """A `kubernetes-install` daemon (AppAPI 34's `--k8s_*` options): how HaRP exposes its ExApps."""

    expose_type: str = "clusterip"  # nodeport, clusterip, loadbalancer, manual
    node_port: int | None = None
    upstream_host: str | None = None
    external_traffic_policy: str | None = None  # Cluster, Local
    load_balancer_ip: str | None = None
    node_address_type: str = "InternalIP"  # InternalIP, ExternalIP


class DeployConfig(msgspec.Struct, frozen=True):
    """AppAPI's DeployConfig of a daemon (the seed's JSON; `computeDevice` keeps AppAPI's spelling)."""

    net: str = "host"
    nextcloud_url: str = ""
    haproxy_password: str = ""
    computeDevice: ComputeDevice = msgspec.field(default_factory=ComputeDevice)
    harp: HarpConfig | None = None
    kubernetes: KubernetesConfig | None = None
    additional_options: dict[str, str] = msgspec.field(default_factory=dict)
    docker_api_version: str = "auto"


class DaemonRecord(msgspec.Struct, frozen=True):
    """A registered deploy daemon (AppAPI's DaemonConfig). `host` is None for `null` (manual-install)."""

    name: str
    display_name: str
    deploy_id: str  # docker-install, manual-install or kubernetes-install
    protocol: str  # http or https
    host: str | None
    deploy_config: DeployConfig
    is_default: bool = False
    created_at: float = 0.0

    @property
    def nextcloud_url(self) -> str:
        return self.deploy_config.nextcloud_url
