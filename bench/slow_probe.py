"""berthd whose capability probe is slow: `python -m bench.slow_probe SECONDS INTERVAL [BERTHD_ARG ...]`.

For the capabilities benchmark only; nothing of it is in berthd. Before berthd starts, the probe is
given an NVML whose `nvmlInit` sleeps SECONDS before calling pynvml's own (a GPU host without persistence
mode is that slow), and a Docker engine that answers its version after SECONDS, as `bench-N` for the
probe's number N (so the benchmark can count the probes that ran). The full probe is repeated every
INTERVAL seconds instead of every 30, so that one is nearly always in flight.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pynvml

from berthd.host import capabilities
from berthd.host.capabilities import CapabilityCache, HostReport

VERSION_PREFIX = "bench-"


class SlowNvml:
    """pynvml, with an `nvmlInit` that takes `seconds` first."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def nvmlInit(self) -> None:
        time.sleep(self._seconds)
        pynvml.nvmlInit()

    def __getattr__(self, name: str) -> Any:
        return getattr(pynvml, name)


def slow_engine(seconds: float) -> Callable[[], str | None]:
    probes = itertools.count(1)

    def version() -> str | None:
        time.sleep(seconds)
        return f"{VERSION_PREFIX}{next(probes)}"

    return version


def slow_down(seconds: float, interval: float) -> None:
    real_probe = capabilities.probe_host
    real_run = CapabilityCache.run
    nvml, engine = SlowNvml(seconds), slow_engine(seconds)

    def probe_host(
        data_dir: Path, nvml_: object | None = None, docker_version: Callable[[], str | None] | None = None
    ) -> HostReport:
        return real_probe(data_dir, nvml, engine)

    async def run(self: CapabilityCache, *args: Any, **kwargs: Any) -> None:
        await real_run(self, interval, **kwargs)

    capabilities.probe_host = probe_host  # type: ignore[assignment]
    CapabilityCache.run = run  # type: ignore[method-assign]


def main(argv: Sequence[str]) -> int:
    seconds, interval, *berthd_args = argv
    slow_down(float(seconds), float(interval))
    from berthd.main import main as berthd_main

    return berthd_main(berthd_args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
