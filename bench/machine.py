"""What the figures were measured on, printed once at the top."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from berthd import __version__ as berthd_version


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def socat_version() -> str:
    socat = shutil.which("socat")
    if socat is None:
        return "not installed"
    out = subprocess.run([socat, "-V"], capture_output=True, text=True, timeout=10, check=False).stdout
    for line in out.splitlines():
        if line.startswith("socat version"):
            return line.split()[2]
    return "unknown"


def describe() -> list[tuple[str, str]]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("cores", f"{os.cpu_count()} ({usable} usable by this process)"),
        ("cpu", cpu_model()),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("system", platform.platform()),
        ("load average", f"{load} (1, 5, 15 min) at the start"),
        ("versions", f"berthd {berthd_version}, trio {package_version('trio')}, "
                     f"msgspec {package_version('msgspec')}, socat {socat_version()}, "
                     f"supervisor {package_version('supervisor')}"),
    ]  # fmt: skip


def print_machine() -> None:
    rows = describe()
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
