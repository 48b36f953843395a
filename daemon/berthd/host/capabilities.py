"""The capability probe: what this host offers an app, named as the standalone-services seed names it.

`probe_host` blocks (NVML, the Docker engine, psutil, statvfs) and runs in a thread. `CapabilityCache`
keeps the latest answer: the full probe is repeated every 30 s and the memory and disk figures every 2 s,
so `system:capabilities` reads a cached value and a slow NVML or engine never delays a command.

Nothing is made up: a figure the probe cannot read is `null`, and why is said in the notes, which go to
people (the command's output), never into `data`.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import psutil
import trio

from berthd.log import LOG

PROBE_INTERVAL = 30.0
USAGE_INTERVAL = 2.0
DOCKER_TIMEOUT = 2.0
DEFAULT_DOCKER_SOCKET = Path("/var/run/docker.sock")
MIB = 2**20

PLATFORMS = {"linux": "linux", "darwin": "darwin", "win32": "windows", "cygwin": "windows"}
# platform.machine() across kernels (Linux, BSD, macOS, Windows), to the seed's (Go's) names. Anything
# else (ppc64le, s390x, riscv64, ...) is none of the four: null, with a note.
ARCHITECTURES = {
    **dict.fromkeys(("x86_64", "amd64", "x64", "em64t"), "amd64"),
    **dict.fromkeys(("aarch64", "arm64", "armv8", "armv8a", "armv8-a"), "arm64"),
    **dict.fromkeys(("i386", "i486", "i586", "i686", "x86", "i86pc"), "386"),
    # armv8l: a 32-bit ARM userland on a 64-bit core
    **dict.fromkeys(("arm", "armv5tel", "armv5tejl", "armv6l", "armv7", "armv7l", "armv8l", "armhf"), "arm"),
}
# What platform.processor() says when it does not know the model: the architecture, or nothing.
NOT_A_CPU_MODEL = frozenset({"", "unknown", *ARCHITECTURES})
# /proc/cpuinfo names the model differently per architecture: x86 "model name", 32-bit ARM "Processor"
# (capitalised; "processor" is the CPU's number), MIPS "cpu model", PowerPC "cpu". arm64 names none.
CPUINFO_MODEL_KEYS = ("model name", "Processor", "cpu model", "cpu")

# NVML's return codes (nvml.h), compared rather than pynvml's generated exception classes, so that a
# stand-in NVML needs only `NVMLError` with a `value`.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_DEVICE_MIG_ENABLE = 1


class Gpu(msgspec.Struct, frozen=True):
    """One GPU, or one MIG device of a GPU (a slice with its own memory, given to an app by its UUID)."""

    index: int  # NVML's index of the GPU; for a MIG device, its number among its parent's MIG devices
    name: str | None
    vendor: str
    memory_mb: int | None
    uuid: str | None  # GPU-... or MIG-...: what a container's device request names
    driver_version: str | None
    mig_enabled: bool = False  # a GPU in MIG mode is only usable through its MIG devices
    mig_parent: int | None = None  # a MIG device: its GPU's index; a whole GPU: null


class Capabilities(msgspec.Struct, frozen=True):
    """Exactly the seed's keys, in its order."""

    platform: str | None
    architecture: str | None
    kernel_version: str | None
    cpu_model: str | None
    cpu_cores: int | None
    cpu_threads: int | None
    total_memory_mb: int | None
    available_memory_mb: int | None
    total_disk_mb: int | None
    available_disk_mb: int | None
    gpus: list[Gpu]
    has_docker: bool
    docker_version: str | None
    has_python: bool
    python_version: str | None


class HostReport(NamedTuple):
    capabilities: Capabilities
    notes: tuple[str, ...]  # why a figure is missing, for people; never part of `data`


class Usage(NamedTuple):
    total_memory_mb: int | None
    available_memory_mb: int | None
    total_disk_mb: int | None
    available_disk_mb: int | None


def probe_host(
    data_dir: Path,
    nvml: object | None = None,
    docker_version: Callable[[], str | None] | None = None,
) -> HostReport:
    """Everything at once (blocking). `nvml` is the pynvml module or a stand-in (default: pynvml);
    `docker_version` asks the engine for its version (default: the engine of `default_docker_url()`)."""
    notes: list[str] = []
    gpus = probe_gpus(nvml, notes)
    if docker_version is None:
        docker_version = default_engine_version
    engine = docker_version()
    if engine is None:
        notes.append("docker: no engine answered")
    machine = platform.machine()
    architecture = architecture_name(machine)
    if architecture is None:
        notes.append(f"architecture: {machine or 'unknown'} is none of {', '.join(_seed_architectures())}")
    host_platform = PLATFORMS.get(sys.platform)
    if host_platform is None:
        notes.append(f"platform: {sys.platform} is none of linux, darwin, windows")
    cpu_model = probe_cpu_model()
    if cpu_model is None:
        notes.append("cpu_model: the system does not name the CPU model")
    usage = probe_usage(data_dir, notes)  # last: the freshest figures
    capabilities = Capabilities(
        platform=host_platform,
        architecture=architecture,
        kernel_version=platform.release() or None,
        cpu_model=cpu_model,
        cpu_cores=_cpu_count(logical=False),
        cpu_threads=_cpu_count(logical=True),
        total_memory_mb=usage.total_memory_mb,
        available_memory_mb=usage.available_memory_mb,
        total_disk_mb=usage.total_disk_mb,
        available_disk_mb=usage.available_disk_mb,
        gpus=gpus,
        has_docker=engine is not None,
        docker_version=engine,
        has_python=True,
        python_version=platform.python_version(),
    )
    return HostReport(capabilities, tuple(notes))


def _seed_architectures() -> list[str]:
    return list(dict.fromkeys(ARCHITECTURES.values()))


def architecture_name(machine: str) -> str | None:
    """`platform.machine()` as the seed names it (amd64, arm64, 386, arm); None when it is none of them."""
    return ARCHITECTURES.get(machine.strip().lower())


def probe_cpu_model() -> str | None:
    if sys.platform == "linux":
        # Not platform.processor() here: on Linux it spawns `uname -p`, which names the architecture.
        return _cpuinfo_model(Path("/proc/cpuinfo"))
    model = platform.processor().strip()
    return None if model.lower() in NOT_A_CPU_MODEL else model


def _cpuinfo_model(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return next((fields[key] for key in CPUINFO_MODEL_KEYS if fields.get(key)), None)


def _cpu_count(logical: bool) -> int | None:
    count = psutil.cpu_count(logical=logical)
    return int(count) if count else None


def probe_usage(data_dir: Path, notes: list[str] | None = None) -> Usage:
    """Memory and the data dir's filesystem, in MiB: cheap enough to read every few seconds."""
    memory = psutil.virtual_memory()
    try:
        disk = shutil.disk_usage(data_dir)
    except OSError as exc:
        if notes is not None:
            notes.append(f"disk: cannot read the filesystem of {data_dir}: {exc}")
        total_disk, available_disk = None, None
    else:
        total_disk, available_disk = disk.total // MIB, disk.free // MIB  # free: what non-root may use
    return Usage(memory.total // MIB, memory.available // MIB, total_disk, available_disk)


# --- GPUs (NVML) ---


def probe_gpus(nvml: object | None, notes: list[str]) -> list[Gpu]:
    """The NVIDIA GPUs and their MIG devices; [] (and a note) when NVML is missing or fails."""
    if nvml is None:
        try:
            import pynvml
        except ImportError as exc:
            notes.append(f"gpus: NVML is not installed ({exc})")
            return []
        nvml = pynvml
    lib: Any = nvml
    try:
        lib.nvmlInit()
    except lib.NVMLError as exc:
        notes.append(f"gpus: NVML unavailable: {exc}")
        return []
    try:
        return _list_gpus(lib, notes)
    except lib.NVMLError as exc:
        notes.append(f"gpus: NVML failed: {exc}")
        return []
    finally:
        try:
            lib.nvmlShutdown()
        except lib.NVMLError as exc:
            notes.append(f"gpus: NVML shutdown failed: {exc}")


def _list_gpus(lib: Any, notes: list[str]) -> list[Gpu]:
    def ask(what: str, call: Callable[..., Any], *args: Any) -> Any:
        """One figure; a failure makes it null (and a note), not the whole list."""
        try:
            return call(*args)
        except lib.NVMLError as exc:
            notes.append(f"gpus: {what}: {exc}")
            return None

    driver = _text(ask("driver version", lib.nvmlSystemGetDriverVersion))
    gpus: list[Gpu] = []
    for index in range(lib.nvmlDeviceGetCount()):
        try:
            handle = lib.nvmlDeviceGetHandleByIndex(index)
        except lib.NVMLError as exc:
            notes.append(f"gpus: GPU {index} skipped: {exc}")
            continue
        mig_enabled = _mig_enabled(lib, handle, index, notes)

        def device(what: str, device_handle: Any, number: int, **extra: Any) -> Gpu:
            return Gpu(
                index=number,
                name=_text(ask(f"{what} name", lib.nvmlDeviceGetName, device_handle)),
                vendor="nvidia",
                memory_mb=_memory_mb(ask(f"{what} memory", lib.nvmlDeviceGetMemoryInfo, device_handle)),
                uuid=_text(ask(f"{what} uuid", lib.nvmlDeviceGetUUID, device_handle)),
                driver_version=driver,
                **extra,
            )

        gpus.append(device(f"GPU {index}", handle, index, mig_enabled=mig_enabled))
        if mig_enabled:
            for number, mig in enumerate(_mig_handles(lib, handle, index, notes)):
                gpus.append(device(f"GPU {index} MIG device {number}", mig, number, mig_parent=index))
    return gpus


def _mig_enabled(lib: Any, handle: object, index: int, notes: list[str]) -> bool:
    try:
        current, _pending = lib.nvmlDeviceGetMigMode(handle)
    except lib.NVMLError as exc:
        if getattr(exc, "value", None) != NVML_ERROR_NOT_SUPPORTED:  # most GPUs have no MIG
            notes.append(f"gpus: GPU {index} MIG mode: {exc}")
        return False
    return bool(current == NVML_DEVICE_MIG_ENABLE)


def _mig_handles(lib: Any, handle: object, index: int, notes: list[str]) -> list[object]:
    try:
        slots = int(lib.nvmlDeviceGetMaxMigDeviceCount(handle))
    except lib.NVMLError as exc:
        notes.append(f"gpus: GPU {index} MIG devices: {exc}")
        return []
    handles: list[object] = []
    for slot in range(slots):
        try:
            handles.append(lib.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))
        except lib.NVMLError as exc:
            if getattr(exc, "value", None) != NVML_ERROR_NOT_FOUND:  # an empty slot
                notes.append(f"gpus: GPU {index} MIG slot {slot}: {exc}")
    return handles


def _text(value: object) -> str | None:
    """pynvml answers str; older versions bytes."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) and value else None


def _memory_mb(info: object) -> int | None:
    total = getattr(info, "total", None)
    return int(total) // MIB if isinstance(total, int) else None


# --- Docker ---


def default_docker_url() -> str | None:
    """DOCKER_HOST, else the usual local socket if it exists; None: no engine to ask."""
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host
    return f"unix://{DEFAULT_DOCKER_SOCKET}" if DEFAULT_DOCKER_SOCKET.exists() else None


def docker_version_from(base_url: str) -> str | None:
    """The engine's version (`24.0.7`), or None when it does not answer within `DOCKER_TIMEOUT`."""
    import docker.errors
    import requests

    try:
        client = docker.DockerClient(base_url=base_url, timeout=DOCKER_TIMEOUT)
        try:
            version = client.version().get("Version")
        finally:
            client.close()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        LOG.debug("no Docker engine at %s: %s", base_url, exc)
        return None
    return version if isinstance(version, str) and version else None


def default_engine_version() -> str | None:
    url = default_docker_url()
    return docker_version_from(url) if url else None


# --- the cache ---


class CapabilityCache:
    """The latest probe, for commands to read without waiting on NVML or the engine.

    `docker_url` is the engine whose version is reported (the default deploy daemon's); set it and
    `await refresh()` when that changes.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        docker_url: str | None = None,
        nvml: object | None = None,
        engine: Callable[[], str | None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.docker_url = docker_url
        self._engine = engine  # asks the default deploy daemon's engine, through its own transport
        self._nvml = nvml
        self._report: HostReport | None = None
        self._ready = trio.Event()
        self._probing = trio.Lock()
        self._idle = threading.Event()
        self._idle.set()

    @property
    def report(self) -> HostReport | None:
        """The latest probe, None before the first one ends."""
        return self._report

    async def current(self) -> HostReport:
        """The latest probe; waits only for the very first one."""
        await self._ready.wait()
        assert self._report is not None
        return self._report

    def engine_version(self) -> str | None:
        if self._engine is not None:
            return self._engine()
        return docker_version_from(self.docker_url) if self.docker_url else None

    def _probe(self) -> HostReport:
        self._idle.clear()
        try:
            return probe_host(self.data_dir, self._nvml, self.engine_version)
        finally:
            self._idle.set()

    def wait_idle(self, timeout: float) -> bool:
        """At shutdown: let a probe still in NVML or the engine end (bounded) before the interpreter
        finalizes under it."""
        return self._idle.wait(timeout)

    async def refresh(self) -> HostReport:
        """Probe everything again (in a thread); one probe at a time."""
        async with self._probing:
            report = await trio.to_thread.run_sync(
                self._probe,
                thread_name="berthd capability probe",
                abandon_on_cancel=True,  # shutdown does not wait on a hung NVML or engine
            )
        self._report = report
        self._ready.set()
        return report

    async def refresh_usage(self) -> None:
        """Memory and disk only: cheap, so they can be fresher than the rest."""
        if self._report is None:
            return
        notes: list[str] = []
        usage = await trio.to_thread.run_sync(
            probe_usage, self.data_dir, notes, thread_name="berthd usage probe"
        )
        if self._report is None or notes:
            return  # the full probe's notes say why the disk figures are missing
        fresh = msgspec.structs.replace(self._report.capabilities, **usage._asdict())
        self._report = HostReport(fresh, self._report.notes)

    async def run(
        self,
        interval: float = PROBE_INTERVAL,
        usage_interval: float = USAGE_INTERVAL,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Probe once, report started, then refresh forever: everything every `interval` seconds,
        memory and disk every `usage_interval`."""
        await self.refresh()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._every, interval, self.refresh)
            nursery.start_soon(self._every, usage_interval, self.refresh_usage)

    @staticmethod
    async def _every(seconds: float, probe: Callable[[], Awaitable[object]]) -> None:
        while True:
            await trio.sleep(seconds)
            await probe()


# --- for people ---


def summary(capabilities: Capabilities, notes: Sequence[str] = ()) -> str:
    """A few readable lines; the notes say what could not be read."""
    c = capabilities

    def known(value: object, unit: str = "") -> str:
        return "unknown" if value is None else f"{value}{unit}"

    lines = [
        f"platform:  {known(c.platform)} {known(c.architecture)}, kernel {known(c.kernel_version)}",
        f"cpu:       {known(c.cpu_model)}, {known(c.cpu_cores)} cores, {known(c.cpu_threads)} threads",
        f"memory:    {known(c.available_memory_mb, ' MB')} available of {known(c.total_memory_mb, ' MB')}",
        f"disk:      {known(c.available_disk_mb, ' MB')} available of {known(c.total_disk_mb, ' MB')}"
        " (data dir)",
    ]
    if not c.gpus:
        lines.append("gpus:      none")
    for gpu in c.gpus:
        where = f"GPU {gpu.index}" if gpu.mig_parent is None else f"GPU {gpu.mig_parent} MIG {gpu.index}"
        mig = ", MIG enabled" if gpu.mig_enabled else ""
        lines.append(
            f"gpu:       {where}: {known(gpu.name)}, {known(gpu.memory_mb, ' MB')}, {known(gpu.uuid)}, "
            f"driver {known(gpu.driver_version)}{mig}"
        )
    lines.append(f"docker:    {c.docker_version if c.has_docker else 'none'}")
    lines.append(f"python:    {known(c.python_version)}")
    lines += [f"note:      {note}" for note in notes]
    return "\n".join(lines)
