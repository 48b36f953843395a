"""The commands, grouped by topic. Importing this package fills the registry."""

from berthd.commands import (
    apps,
    audit,
    config,
    core,
    daemons,
    git,
    images,
    logs,
    ps,
    run,
    sources,
    system,
    upload,
)

__all__ = [
    "apps",
    "audit",
    "config",
    "core",
    "daemons",
    "git",
    "images",
    "logs",
    "ps",
    "run",
    "sources",
    "system",
    "upload",
]
