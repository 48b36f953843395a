"""Deploy daemons (AppAPI's DaemonConfigs): checking a registration as AppAPI does, and showing one.

A daemon's `host` is one of three things: the absolute path of a Docker socket, `HOST:PORT` of a Docker
Socket Proxy or of HaRP, or `null` (a manual-install daemon, which has no engine). Secrets (the haproxy
password, the HaRP shared key) are stored, used by `berthd.runners.docker.engine`, and never shown but as `***`;
a URL (`nextcloud_url`, an option's value) is shown without its user and password.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

import msgspec

from berthd.apps.settings import DAEMON_NAME
from berthd.errors import invalid_argument
from berthd.server.params import Params, about
from berthd.server.redaction import without_credentials
from berthd.store.records import ComputeDevice, DaemonRecord, DeployConfig, HarpConfig, KubernetesConfig

DOCKER_INSTALL = "docker-install"
MANUAL_INSTALL = "manual-install"
KUBERNETES_INSTALL = "kubernetes-install"
SWARM_INSTALL = "swarm-install"  # berthd's own: a Docker Swarm manager, apps as services
DEPLOY_IDS = (DOCKER_INSTALL, MANUAL_INSTALL, KUBERNETES_INSTALL, SWARM_INSTALL)
EXPOSE_TYPES = ("nodeport", "clusterip", "loadbalancer", "manual")
TRAFFIC_POLICIES = ("Cluster", "Local")
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
NODE_PORTS = range(30000, 32768)
DEFAULT_K8S_NET = "bridge"
PROTOCOLS = ("http", "https")
COMPUTE_DEVICES = {"cpu": "CPU", "cuda": "CUDA (NVIDIA)", "rocm": "ROCm (AMD)"}
DEFAULT_NET = "host"
DEFAULT_HARP_DOCKER_SOCKET_PORT = "24000"
NO_HOST = "null"
SECRET_MASK = "***"

DOCKER_API_VERSION_OPTION = "docker_api_version"
TLS_CA_FILE_OPTION = "tls_ca_file"
"""Additional option: a CA bundle to verify an https daemon against (verification is always on)."""

MAX_DISPLAY_NAME = 255
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its NUL
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*):(?P<port>[0-9]{1,5})\Z")
BARE_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*)\Z")
NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
OPTION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
API_VERSION = re.compile(r"^[0-9]{1,2}\.[0-9]{1,3}\Z")

HOST_FORMS = (
    "the path of a Docker socket (/var/run/docker.sock), HOST:PORT of a Docker Socket Proxy or HaRP"
    " (nextcloud-appapi-dsp:2375), or null for a manual-install daemon"
)


class RegisterParams(Params):
    """`daemons:register`: exactly the arguments and options of `occ app_api:daemon:register`."""

    daemon_fields: ClassVar[tuple[str, ...]] = ("name",)

    name: Annotated[str, about("the daemon's name")]
    display_name: Annotated[str, about("its name for people")]
    accepts_deploy_id: Annotated[str, about("docker-install, manual-install or kubernetes-install")]
    protocol: Annotated[str, about("http or https")]
    host: Annotated[str, about("the Docker socket, a Docker Socket Proxy's host:port, or null (manual)")]
    nextcloud_url: Annotated[str, about("the Nextcloud the ExApps talk to")]
    net: Annotated[str | None, about("the Docker network of its containers (default host)")] = None
    haproxy_password: Annotated[str | None, about("the Docker Socket Proxy's password")] = None
    compute_device: Annotated[str | None, about("cpu, cuda or rocm")] = None
    set_default: Annotated[bool, about("make it the default daemon")] = False
    harp: Annotated[bool, about("reached through HaRP")] = False
    harp_frp_address: Annotated[str | None, about("HaRP's FRP server, host:port")] = None
    harp_shared_key: Annotated[str | None, about("HaRP's shared key")] = None
    harp_docker_socket_port: Annotated[str, about("HaRP's port of the remote Docker socket")] = (
        DEFAULT_HARP_DOCKER_SOCKET_PORT
    )
    harp_exapp_direct: Annotated[bool, about("ExApps reached directly, not through HaRP")] = False
    k8s: Annotated[bool, about("deploy onto Kubernetes through HaRP (needs --harp)")] = False
    k8s_expose_type: Annotated[str, about("nodeport, clusterip, loadbalancer or manual")] = "clusterip"
    k8s_node_port: Annotated[str | None, about("30000-32767, for nodeport")] = None
    k8s_upstream_host: Annotated[str | None, about("where HaRP reaches the app, for manual")] = None
    k8s_external_traffic_policy: Annotated[str | None, about("Cluster or Local")] = None
    k8s_load_balancer_ip: Annotated[str | None, about("for loadbalancer")] = None
    k8s_node_address_type: Annotated[str, about("InternalIP or ExternalIP")] = "InternalIP"
    option: Annotated[list[str], about("a deploy option KEY=VALUE (repeatable)")] = msgspec.field(
        default_factory=list
    )
    positional = ("name", "display_name", "accepts_deploy_id", "protocol", "host", "nextcloud_url")
    # an option's value may be a credential (a token for a proxy, say): the log shows KEY=***
    secret = frozenset({"haproxy_password", "harp_shared_key", "option"})
    metavars = {
        "display_name": "DISPLAY-NAME",
        "accepts_deploy_id": "ACCEPTS-DEPLOY-ID",
        "nextcloud_url": "NEXTCLOUD_URL",
        "option": "KEY=VALUE",
    }


def is_socket_path(host: str | None) -> bool:
    return host is not None and host.startswith("/")


def check_name(name: str) -> str:
    if not DAEMON_NAME.match(name):
        raise invalid_argument(
            f"invalid daemon name {name!r}: 1 to 255 characters without control characters"
        )
    return name


def _check_display_name(value: str) -> str:
    if CONTROL.search(value) or len(value) > MAX_DISPLAY_NAME:
        raise invalid_argument(
            f"invalid display-name {value!r}: at most {MAX_DISPLAY_NAME} characters without control characters"
        )
    return value


def _check_deploy_id(value: str, k8s: bool) -> tuple[str, list[str]]:
    """The deploy id as stored, and a note when `--k8s` overrides it (as AppAPI does)."""
    if k8s:
        if value == KUBERNETES_INSTALL:
            return value, []
        return KUBERNETES_INSTALL, [
            f'Note: --k8s flag detected. Overriding accepts-deploy-id to "{KUBERNETES_INSTALL}".'
        ]
    if value == KUBERNETES_INSTALL:
        raise invalid_argument(
            f"accepts-deploy-id {KUBERNETES_INSTALL} is a Kubernetes daemon: register it with --harp --k8s"
        )
    if value not in DEPLOY_IDS:
        raise invalid_argument(
            f"invalid accepts-deploy-id {value!r}: expected {DOCKER_INSTALL}, {MANUAL_INSTALL} or"
            f" {KUBERNETES_INSTALL} (with --k8s)"
        )
    return value, []


def _check_protocol(value: str) -> str:
    if value not in PROTOCOLS:
        raise invalid_argument(f"invalid protocol {value!r}: the protocol must be `http` or `https`")
    return value


def _check_port(value: str, what: str) -> str:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise invalid_argument(f"invalid {what} {value!r}: a port is a number from 1 to 65535")
    return str(int(value))


def _check_host(host: str, deploy_id: str, harp: bool) -> tuple[str | None, list[str]]:
    """The host as stored (None for `null`) and any warnings, or a refusal naming the accepted forms."""
    if SCHEME.match(host):
        raise invalid_argument(
            f"invalid host {without_credentials(host)!r}: the host must not include a protocol (give the protocol as its own"
            f" argument); expected {HOST_FORMS}"
        )
    if CONTROL.search(host) or not host:
        raise invalid_argument(f"invalid host {host!r}: expected {HOST_FORMS}")
    if host == NO_HOST:
        if deploy_id != MANUAL_INSTALL:
            raise invalid_argument(
                f"invalid host null: only a {MANUAL_INSTALL} daemon has no host; a {deploy_id} daemon"
                " needs a Docker socket path or HOST:PORT"
            )
        return None, []
    if host.startswith("/"):
        if harp:
            raise invalid_argument(f"invalid host {host!r}: with --harp the host is HaRP's HOST:PORT")
        if deploy_id == MANUAL_INSTALL:
            raise invalid_argument(
                f"invalid host {host!r}: a {MANUAL_INSTALL} daemon has no Docker engine; its host is"
                " where its apps listen (HOST, or null)"
            )
        if len(os.fsencode(host)) > MAX_SOCKET_PATH:
            raise invalid_argument(
                f"invalid host {host!r}: a socket path is at most {MAX_SOCKET_PATH} bytes long"
            )
        return os.path.normpath(host), []
    match = HOST_PORT.match(host)
    if match:
        _check_port(match["port"], "host port")
        if deploy_id == MANUAL_INSTALL and not harp:
            return host, [
                "Warning: The host contains a port, which will be ignored for manual-install daemons."
                " The ExApp's port will be used instead."
            ]
        return host, []
    if deploy_id == MANUAL_INSTALL and not harp and BARE_HOST.match(host):
        return host, []
    raise invalid_argument(f"invalid host {host!r}: expected {HOST_FORMS}")


def _check_nextcloud_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in PROTOCOLS or not parts.netloc or CONTROL.search(url):
        raise invalid_argument(
            f"invalid nextcloud_url {without_credentials(url)!r}: an http or https URL, e.g. https://nextcloud.local"
        )
    return url.rstrip("/")


def _check_net(net: str) -> str:
    if not NETWORK.match(net):
        raise invalid_argument(
            f"invalid --net {net!r}: a Docker network name (letters, digits, _ . -), e.g. host or nextcloud"
        )
    return net


def _compute_device(value: str) -> ComputeDevice:
    if value not in COMPUTE_DEVICES:
        raise invalid_argument(f"invalid --compute_device {value!r}: expected cpu, cuda or rocm")
    return ComputeDevice(value, COMPUTE_DEVICES[value])


def _check_secret(value: str, option: str) -> str:
    # The value is never echoed: it is a secret.
    if CONTROL.search(value):
        raise invalid_argument(f"invalid --{option}: it contains control characters")
    return value


def _check_frp_address(value: str) -> str:
    if SCHEME.match(value):
        raise invalid_argument(
            f"invalid --harp_frp_address {without_credentials(value)!r}: FRP's address must not include a protocol;"
            " expected HOST:PORT (e.g. appapi-harp:8782)"
        )
    if CONTROL.search(value) or " " in value:
        raise invalid_argument(f"invalid --harp_frp_address {value!r}: expected HOST:PORT")
    return value


def _one_of(value: str, valid: Sequence[str], what: str) -> str:
    if value not in valid:
        raise invalid_argument(f'Invalid {what} "{value}". Must be one of: {", ".join(valid)}')
    return value


def _kubernetes(request: RegisterParams) -> KubernetesConfig:
    """AppAPI 34's `--k8s_*` options, with its refusals in its order."""
    expose_type = _one_of(request.k8s_expose_type, EXPOSE_TYPES, "k8s_expose_type")
    node_port: int | None = None
    if request.k8s_node_port is not None:
        if expose_type != "nodeport":
            raise invalid_argument("--k8s_node_port is only valid with --k8s_expose_type=nodeport")
        text = request.k8s_node_port
        if not text.isdigit() or int(text) not in NODE_PORTS:
            raise invalid_argument("--k8s_node_port must be between 30000 and 32767")
        node_port = int(text)
    if request.k8s_load_balancer_ip is not None and expose_type != "loadbalancer":
        raise invalid_argument("--k8s_load_balancer_ip is only valid with --k8s_expose_type=loadbalancer")
    upstream_host = request.k8s_upstream_host
    if expose_type == "manual" and upstream_host is None:
        raise invalid_argument("--k8s_upstream_host is required for --k8s_expose_type=manual")
    if upstream_host is not None and (not upstream_host or not BARE_HOST.match(upstream_host)):
        raise invalid_argument(f"invalid --k8s_upstream_host {upstream_host!r}: a host name or address")
    policy = request.k8s_external_traffic_policy
    if policy is not None:
        _one_of(policy, TRAFFIC_POLICIES, "k8s_external_traffic_policy")
    lb_ip = request.k8s_load_balancer_ip
    if lb_ip is not None and (not lb_ip or not BARE_HOST.match(lb_ip)):
        raise invalid_argument(f"invalid --k8s_load_balancer_ip {lb_ip!r}: an IP address")
    address_type = _one_of(request.k8s_node_address_type, NODE_ADDRESS_TYPES, "k8s_node_address_type")
    return KubernetesConfig(expose_type, node_port, upstream_host, policy, lb_ip, address_type)


def _parse_options(pairs: Sequence[str]) -> tuple[dict[str, str], str]:
    """`--option KEY=VALUE` pairs: the additional options and the Docker API version."""
    options: dict[str, str] = {}
    api_version = "auto"
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not OPTION_KEY.match(key):
            raise invalid_argument(
                f"invalid --option {without_credentials(pair)!r}: expected KEY=VALUE, e.g. OVERRIDE_APP_HOST=0.0.0.0"
            )
        if CONTROL.search(value):
            raise invalid_argument(f"invalid --option {key}: the value contains control characters")
        if key.lower() == DOCKER_API_VERSION_OPTION:
            if value != "auto" and not API_VERSION.match(value):
                raise invalid_argument(
                    f"invalid --option {key}={value}: auto (negotiated with the engine) or a version like 1.41"
                )
            api_version = value
            continue
        if key == TLS_CA_FILE_OPTION and not os.path.isabs(value):
            raise invalid_argument(f"invalid --option {key}={value}: the path must be absolute")
        options[key] = value
    return options, api_version


def build_daemon(request: RegisterParams) -> tuple[DaemonRecord, list[str]]:
    """A checked DaemonRecord from `daemons:register`'s arguments, with warnings for the user.

    The checks are AppAPI's (RegisterDaemon and DaemonConfigService), in AppAPI's order where it has one.
    """
    name = check_name(request.name)
    display_name = _check_display_name(request.display_name)
    protocol = _check_protocol(request.protocol)
    if request.k8s and not request.harp:
        raise invalid_argument("Kubernetes daemon (--k8s) requires --harp flag. K8s always uses HaRP.")
    deploy_id, warnings = _check_deploy_id(request.accepts_deploy_id, request.k8s)
    harp: HarpConfig | None = None
    kubernetes: KubernetesConfig | None = None
    if request.harp:
        key, frp_address = request.harp_shared_key, request.harp_frp_address
        if not key or (not frp_address and not request.k8s):
            missing = [
                o
                for o, v in (("--harp_shared_key", key), ("--harp_frp_address", frp_address or request.k8s))
                if not v
            ]
            raise invalid_argument(f"a HaRP enabled daemon (--harp) requires {' and '.join(missing)}")
        if request.k8s:
            kubernetes = _kubernetes(request)
        harp = HarpConfig(
            frp_address=_check_frp_address(frp_address) if frp_address else "",
            shared_key=_check_secret(key, "harp_shared_key"),
            docker_socket_port=_check_port(request.harp_docker_socket_port, "--harp_docker_socket_port"),
            exapp_direct=request.k8s or request.harp_exapp_direct,  # Kubernetes: Service-based, never FRP
        )
    elif request.harp_shared_key or request.harp_frp_address or request.harp_exapp_direct:
        warnings.append("Note: the --harp_* options are ignored without --harp.")
    if not request.k8s and _k8s_options_given(request):
        warnings.append("Note: the --k8s_* options are ignored without --k8s.")
    host, host_warnings = _check_host(request.host, deploy_id, request.harp)
    warnings += host_warnings
    net = _check_net(
        request.net if request.net is not None else DEFAULT_K8S_NET if request.k8s else DEFAULT_NET
    )
    if harp is not None and harp.exapp_direct and deploy_id == DOCKER_INSTALL and net == "host":
        raise invalid_argument(
            "--harp_exapp_direct cannot be used with --net host: setting `net=host` in HaRP is not"
            " supported when communication with ExApps is done directly without FRP; give --net a"
            " Docker network (e.g. --net nextcloud)"
        )
    options, api_version = _parse_options(request.option)
    # As AppAPI: with HaRP the shared key is also the daemon's secret.
    secret = harp.shared_key if harp else _check_secret(request.haproxy_password or "", "haproxy_password")
    config = DeployConfig(
        net=net,
        nextcloud_url=_check_nextcloud_url(request.nextcloud_url),
        haproxy_password=secret,
        computeDevice=_compute_device(request.compute_device or "cpu"),
        harp=harp,
        kubernetes=kubernetes,
        additional_options=options,
        docker_api_version=api_version,
    )
    record = DaemonRecord(name, display_name, deploy_id, protocol, host, config, created_at=time.time())
    return record, warnings


def _k8s_options_given(request: RegisterParams) -> bool:
    defaults = RegisterParams("", "", "", "", "", "")
    return any(
        getattr(request, field) != getattr(defaults, field)
        for field in RegisterParams.__struct_fields__
        if field.startswith("k8s_")
    )


SECRET_KEY = re.compile(r"(?i)pass|secret|token|key|auth|credential|cookie")
"""An additional option whose name says it holds a credential: `daemons:list` shows its value as `***`."""


def _masked(value: str) -> str:
    return SECRET_MASK if value else ""


def public_view(record: DaemonRecord) -> dict[str, Any]:
    """The daemon as `daemons:list` shows it in `data`: secrets as `***`."""
    config = record.deploy_config
    shown: dict[str, Any] = msgspec.to_builtins(config)
    shown["nextcloud_url"] = without_credentials(config.nextcloud_url)
    shown["additional_options"] = {
        key: SECRET_MASK if SECRET_KEY.search(key) else without_credentials(value)
        for key, value in config.additional_options.items()
    }
    shown["haproxy_password"] = _masked(config.haproxy_password)
    if config.harp is not None:
        shown["harp"]["shared_key"] = _masked(config.harp.shared_key)
    return {
        "name": record.name,
        "display_name": record.display_name,
        "deploy_id": record.deploy_id,
        "protocol": record.protocol,
        "host": record.host,
        "is_default": record.is_default,
        "created_at": datetime.fromtimestamp(record.created_at, UTC).isoformat(timespec="seconds"),
        "deploy_config": shown,
    }


TABLE_HEADERS = (
    "Def",
    "Name",
    "Display name",
    "Deploy ID",
    "Protocol",
    "Host",
    "NC Url",
    "Is HaRP",
    "HaRP FRP Address",
    "HaRP Docker Socket Port",
    "HaRP ExApp Direct",
    "K8s Expose Type",
)


def _row(record: DaemonRecord) -> list[str]:
    harp = record.deploy_config.harp
    return [
        "*" if record.is_default else "",
        record.name,
        record.display_name,
        record.deploy_id,
        record.protocol,
        record.host if record.host is not None else NO_HOST,
        without_credentials(record.deploy_config.nextcloud_url),
        "yes" if harp else "no",
        harp.frp_address if harp else "(none)",
        harp.docker_socket_port if harp else "(none)",
        ("yes" if harp.exapp_direct else "no") if harp else "(none)",
        record.deploy_config.kubernetes.expose_type if record.deploy_config.kubernetes else "(none)",
    ]


def render_table(records: Sequence[DaemonRecord]) -> str:
    """`app_api:daemon:list`'s table (Symfony's style); no secret is in any column."""
    if not records:
        return "No registered daemon configs."
    rows = [list(TABLE_HEADERS), *(_row(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADERS))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {cell.ljust(w)} " for cell, w in zip(cells, widths, strict=True)) + "|"

    body = [line(row) for row in rows[1:]]
    return "\n".join(["Registered ExApp daemon configs:", rule, line(rows[0]), rule, *body, rule])
