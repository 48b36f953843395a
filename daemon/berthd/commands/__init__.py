"""The commands, grouped by topic. Importing this package fills the registry."""

from berthd.commands import (
    access,
    apps,
    audit,
    config,
    core,
    daemons,
    git,
    images,
    logs,
    metrics,
    ps,
    run,
    sources,
    system,
    upload,
)

__all__ = [
    "access",
    "apps",
    "audit",
    "config",
    "core",
    "daemons",
    "git",
    "images",
    "logs",
    "metrics",
    "ps",
    "run",
    "sources",
    "system",
    "upload",
]
