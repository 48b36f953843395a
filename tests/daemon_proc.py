"""Running a real berthd process for a test: its socket, its data dir, its log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth.client import Client
from berth.messages import Response

ROOT = Path(__file__).resolve().parent.parent


def berthd_command() -> list[str]:
    return [sys.executable, "-m", "berthd"]


@dataclass
class Berthd:
    """A berthd process started by a test."""

    workdir: Path
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "berthd.sock"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        return self.workdir / "berthd.log"

    @property
    def stderr_file(self) -> Path:
        return self.workdir / "berthd.stderr"

    def start(self, wait: bool = True, timeout: float = 10.0) -> Berthd:
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONPATH", str(ROOT))
        args = [
            *berthd_command(),
            "--socket", str(self.socket),
            "--data-dir", str(self.data_dir),
            "--log-file", str(self.log_file),
            *self.extra_args,
        ]  # fmt: skip
        with open(self.stderr_file, "ab") as stderr:
            self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"berthd exited with {self.proc.returncode}:\n{self.stderr_file.read_text()}"
                )
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.socket))
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"berthd did not listen within {timeout} s:\n{self.stderr_file.read_text()}")

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.socket, timeout=timeout)

    def call(self, command: str | Sequence[str], named: dict[str, Any] | None = None) -> Response:
        with self.client() as client:
            return client.call(command, named)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""
