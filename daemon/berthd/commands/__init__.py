"""The commands, grouped by topic. Importing this package fills the registry."""

from berthd.commands import (
    access,
    apps,
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
    "access",
    "apps",
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
