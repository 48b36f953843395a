"""Where an image app goes: the deploy daemon whose engine meets the app's requirements.

Each engine is judged from its own `info` (OS, architecture, CPUs, memory) and its daemon's compute
device (cuda: an NVIDIA GPU, rocm: an AMD one). The default daemon is tried first, then the others by
most memory. Figures an engine does not report (free disk, GPU memory) are not invented: a requirement
on them is unmet there, and says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from berthd.errors import CommandError
from berthd.host.capabilities import Capabilities, Gpu
from berthd.host.requirements import incompatible, unmet
from berthd.store.records import DaemonRecord

Fingerprint = Callable[[DaemonRecord], Awaitable[dict[str, Any]]]  # a daemon's engine `info`

ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
                 "i686": "386", "armv7l": "arm", "armhf": "arm"}  # fmt: skip
VENDORS = {"cuda": "nvidia", "rocm": "amd"}
MIB = 1024 * 1024


def engine_capabilities(info: dict[str, Any], daemon: DaemonRecord) -> Capabilities:
    device = daemon.deploy_config.computeDevice
    vendor = VENDORS.get(device.id) if device is not None else None
    gpus = [Gpu(0, device.label if device else None, vendor, None, None, None)] if vendor else []
    memory = int(info["MemTotal"]) // MIB if info.get("MemTotal") else None
    return Capabilities(
        platform=str(info.get("OSType") or "") or None,
        architecture=ARCHITECTURES.get(str(info.get("Architecture", "")).lower()),
        kernel_version=info.get("KernelVersion"),
        cpu_model=None,
        cpu_cores=info.get("NCPU"),
        cpu_threads=info.get("NCPU"),
        total_memory_mb=memory,
        available_memory_mb=memory,  # an engine reports its total only
        total_disk_mb=None,
        available_disk_mb=None,
        gpus=gpus,
        has_docker=True,
        docker_version=info.get("ServerVersion"),
        has_python=False,
        python_version=None,
    )


async def place(
    app: str, requirements: dict[str, str], daemons: Sequence[DaemonRecord], fingerprint: Fingerprint
) -> tuple[DaemonRecord, str]:
    """The daemon for the app among `daemons` (those whose engine can be fingerprinted) and why;
    `incompatible` with each daemon's reasons when none fits."""
    if not daemons:
        raise CommandError("not_found", "no deploy daemon with an engine registered to place the app on")
    judged: list[tuple[DaemonRecord, Capabilities | None, list[str]]] = []
    for daemon in daemons:
        try:
            info = await fingerprint(daemon)
        except CommandError as exc:
            judged.append((daemon, None, [exc.message]))
            continue
        caps = engine_capabilities(info, daemon)
        judged.append((daemon, caps, unmet(requirements, caps, where=f"engine of {daemon.name}")))
    fitting = [(d, c) for d, c, problems in judged if not problems and c is not None]
    if not fitting:
        reasons = [f"{d.name}: {'; '.join(problems)}" for d, _, problems in judged]
        raise incompatible(app, reasons)
    fitting.sort(key=lambda pair: (not pair[0].is_default, -(pair[1].available_memory_mb or 0)))
    chosen, caps = fitting[0]
    passed_over = [f"{d.name} ({'; '.join(problems)})" for d, _, problems in judged if problems]
    why = f"{chosen.name} meets every requirement" + (
        " and is the default" if chosen.is_default else f" with {caps.available_memory_mb} MB of memory"
    )
    if passed_over:
        why += "; passed over: " + ", ".join(passed_over)
    return chosen, why
