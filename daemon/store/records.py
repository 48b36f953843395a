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


class UploadRecord(msgspec.Struct):
    id: str
    app: str
    filename: str
    total_size: int
    total_chunks: int
    sha256: str | None
    received: bytes  # one bit a chunk
    created_at: float
    options: bytes  # the source options given at upload:begin, applied at upload:end

    @property
    def chunk_size(self) -> int:
        return -(-self.total_size // self.total_chunks)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.total_size - index * self.chunk_size)

    def has(self, index: int) -> bool:
        return bool(self.received[index // 8] & (1 << (index % 8)))

    def received_indexes(self) -> list[int]:
        return [i for i in range(self.total_chunks) if self.has(i)]

    def missing_indexes(self) -> list[int]:
        return [i for i in range(self.total_chunks) if not self.has(i)]
