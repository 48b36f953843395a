"""The commands, grouped by topic. Importing this package fills the registry."""

from daemon.commands import apps, config, core, logs, ps, run, sources

__all__ = ["apps", "config", "core", "logs", "ps", "run", "sources"]
