"""The runner table: which runner runs an app, by the app's source and its deploy daemon's kind (its
deploy id, and whether it goes through HaRP).

This is the only place that knows the runners by name. Adding a runner is a new sub-folder of
`berthd.runners` and one row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from berthd.deploy.daemons import DOCKER_INSTALL, KUBERNETES_INSTALL, MANUAL_INSTALL, SWARM_INSTALL
from berthd.runners import Runner
from berthd.runners.docker.runner import DockerRunner
from berthd.runners.harp.kubernetes import HarpKubernetesRunner
from berthd.runners.harp.manual import HarpManualRunner
from berthd.runners.harp.runner import HarpRunner
from berthd.runners.manual.runner import ManualRunner
from berthd.runners.native.runner import NativeRunner
from berthd.runners.swarm.runner import SwarmRunner
from berthd.store.records import AppRecord, DaemonRecord

IMAGE = "image"
"""The one source kind that runs through a deploy daemon; every other kind runs on this host."""


@dataclass(frozen=True, slots=True)
class Row:
    runner: type[Runner]
    through_daemon: bool  # the app is an image, deployed through a deploy daemon
    deploy_id: str | None = None  # the daemon's `accepts-deploy-id`
    harp: bool = False  # the daemon was registered with --harp


ROWS: tuple[Row, ...] = (
    Row(NativeRunner, through_daemon=False),
    Row(DockerRunner, through_daemon=True, deploy_id=DOCKER_INSTALL),
    Row(ManualRunner, through_daemon=True, deploy_id=MANUAL_INSTALL),
    Row(SwarmRunner, through_daemon=True, deploy_id=SWARM_INSTALL),
    Row(HarpRunner, through_daemon=True, deploy_id=DOCKER_INSTALL, harp=True),
    Row(HarpManualRunner, through_daemon=True, deploy_id=MANUAL_INSTALL, harp=True),
    Row(HarpKubernetesRunner, through_daemon=True, deploy_id=KUBERNETES_INSTALL, harp=True),
)

RUNNERS: tuple[type[Runner], ...] = tuple(dict.fromkeys(row.runner for row in ROWS))


def through_daemon(source_kind: str) -> bool:
    """Does an app with this kind of source run through a deploy daemon (rather than on this host)?"""
    return source_kind == IMAGE


def runner_class(record: AppRecord, daemon: DaemonRecord | None) -> type[Runner]:
    """The runner of the app (an image app's: by its deploy daemon's kind)."""
    if not through_daemon(record.source.kind):
        return host_runner_class()
    if daemon is None:
        raise LookupError(f"{record.name} runs through a deploy daemon and has none")
    return daemon_runner_class(daemon)


def host_runner_class() -> type[Runner]:
    """The runner of the apps that run on this host."""
    return next(row.runner for row in ROWS if not row.through_daemon)


def daemon_runner_class(daemon: DaemonRecord) -> type[Runner]:
    """The runner of the apps deployed through `daemon`."""
    harp = daemon.deploy_config.harp is not None
    for row in ROWS:
        if row.through_daemon and row.deploy_id == daemon.deploy_id and row.harp == harp:
            return row.runner
    raise LookupError(f"no runner for deploy daemons of kind {daemon.deploy_id}")
