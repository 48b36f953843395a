"""AppAPI's ExApp contract: how an image app's container is named, addressed and configured.

Name `nc_app_APP`, hostname APP, environment APP_ID, APP_SECRET, APP_DISPLAY_NAME, APP_VERSION, APP_HOST,
APP_PORT, APP_PERSISTENT_STORAGE, NEXTCLOUD_URL, COMPUTE_DEVICE (in that order), then the app's config;
volume `nc_app_APP_data` at `/nc_app_APP_data` (a renamed app keeps its old volume); the daemon's
network; GPUs per its compute device. Through HaRP with its FRP tunnel (not `harp_exapp_direct`), the
app listens on 127.0.0.1 and is given HP_FRP_ADDRESS, HP_FRP_PORT and HP_SHARED_KEY last, as AppAPI
gives them.
"""

from __future__ import annotations

import socket
from typing import Any

import msgspec

from berthd.store.records import AppRecord

PORT_RANGE = range(23000, 24000)
HEALTH_TIMEOUT = 120.0
NVIDIA_ENV = ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]


class ContainerRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the engine needs to create the container, in the ExApp contract's terms."""

    daemon: str
    image: str
    name: str
    hostname: str
    env: list[str]  # "KEY=VALUE", in order
    volume: str
    volume_target: str
    binds: dict[str, str] = msgspec.field(default_factory=dict)  # host folder: path in the container
    network_mode: str
    restart_policy: str = "unless-stopped"
    gpu: str = "cpu"  # cpu, cuda, rocm
    command: list[str] | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    health_timeout: float = HEALTH_TIMEOUT


def container_name(app: str) -> str:
    return f"nc_app_{app}"


def volume_name(app: str) -> str:
    return f"nc_app_{app}_data"


def volume_of(record: AppRecord) -> str:
    """The app's data volume: named for it, or the name it had (a volume cannot be renamed, so an app
    renamed keeps its old one, recorded in its source)."""
    return record.source.detail.get("volume") or volume_name(record.name)


def image_version(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return last.split("@", 1)[1][:19]
    return last.split(":", 1)[1] if ":" in last else "latest"


def through_frp(daemon: Any) -> bool:
    harp = daemon.deploy_config.harp
    return harp is not None and not harp.exapp_direct


def app_host(daemon: Any) -> str:
    """Where the ExApp listens, as AppAPI decides it: 127.0.0.1 behind HaRP's FRP tunnel, else
    OVERRIDE_APP_HOST, else by network."""
    if through_frp(daemon):
        return "127.0.0.1"
    override = (daemon.deploy_config.additional_options or {}).get("OVERRIDE_APP_HOST")
    if override:
        return str(override)
    if daemon.deploy_id == "manual-install" or daemon.deploy_config.net == "host":
        return "127.0.0.1"
    return "0.0.0.0"


def compute_device(daemon: Any) -> str:
    device = daemon.deploy_config.computeDevice
    return str(device.id) if device is not None else "cpu"


def exapp_env(record: AppRecord, daemon: Any, secret: str, port: int, config: dict[str, str]) -> list[str]:
    app = record.name
    ordered = [
        f"APP_ID={app}",
        f"APP_SECRET={secret}",
        f"APP_DISPLAY_NAME={record.settings.description or app}",
        f"APP_VERSION={image_version(record.source.detail.get('image', ''))}",
        f"APP_HOST={app_host(daemon)}",
        f"APP_PORT={port}",
        f"APP_PERSISTENT_STORAGE=/{volume_of(record)}",
        f"NEXTCLOUD_URL={daemon.deploy_config.nextcloud_url or daemon.nextcloud_url}",
        f"COMPUTE_DEVICE={compute_device(daemon).upper() if compute_device(daemon) != 'cpu' else 'CPU'}",
    ]
    if compute_device(daemon) == "cuda":
        ordered += NVIDIA_ENV
    harp = harp_env(daemon)
    fixed = {line.split("=", 1)[0] for line in ordered + harp}
    return ordered + [f"{key}={value}" for key, value in config.items() if key not in fixed] + harp


def harp_env(daemon: Any) -> list[str]:
    """What an ExApp needs to open its FRP tunnel to HaRP (none when it is reached directly)."""
    if not through_frp(daemon):
        return []
    harp = daemon.deploy_config.harp
    host, _, port = (
        harp.frp_address.rpartition(":") if ":" in harp.frp_address else (harp.frp_address, "", "8782")
    )
    return [f"HP_FRP_ADDRESS={host}", f"HP_FRP_PORT={port}", f"HP_SHARED_KEY={harp.shared_key}"]


WIDE_ADDRESSES = ("0.0.0.0", "127.0.0.1", "::", "::1")


def harp_route_host(daemon: Any, app: str) -> str:
    """The host HaRP routes the app's requests to (AppAPI's `getExAppHost`): 127.0.0.1 through the FRP
    tunnel; directly, OVERRIDE_APP_HOST when it names one host, else the app's own name (its container's
    hostname on the daemon's network), and 127.0.0.1 for a process the user runs."""
    if through_frp(daemon):
        return "127.0.0.1"
    override = (daemon.deploy_config.additional_options or {}).get("OVERRIDE_APP_HOST")
    if override and override not in WIDE_ADDRESSES:
        return str(override)
    return "127.0.0.1" if daemon.deploy_id == "manual-install" else app


def container_request(
    record: AppRecord, daemon: Any, secret: str, port: int, config: dict[str, str]
) -> ContainerRequest:
    return ContainerRequest(
        daemon=daemon.name,
        image=record.source.detail["image"],
        name=container_name(record.name),
        hostname=record.name,
        env=exapp_env(record, daemon, secret, port, config),
        volume=volume_of(record),
        volume_target=f"/{volume_of(record)}",
        network_mode=daemon.deploy_config.net or "host",
        gpu=compute_device(daemon),
        command=list(record.settings.args) or None,
        labels={"berthd.app": record.name, "berthd.daemon": daemon.name},
    )


def free_port(taken: set[int], host: str = "127.0.0.1") -> int:
    """A port of 23000-23999 no other app has and nothing listens on."""
    for port in PORT_RANGE:
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port left in 23000-23999")
