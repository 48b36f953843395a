"""What the store keeps, as msgspec types: the settings columns are these structs encoded as JSON."""

from __future__ import annotations

from typing import Literal

import msgspec


class Mount(msgspec.Struct, frozen=True):
    path: str
    function: Literal["INPUT", "OUTPUT"]


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
