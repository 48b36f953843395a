"""The capability probe, called directly: its figures against /proc and os, and NVML through stand-ins."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pynvml
import pytest
import trio

from berthd.host import capabilities
from berthd.host.capabilities import (
    CapabilityCache,
    Gpu,
    architecture_name,
    default_docker_url,
    docker_version_from,
    probe_host,
    summary,
)

SEED_KEYS = [
    "platform", "architecture", "kernel_version", "cpu_model", "cpu_cores", "cpu_threads",
    "total_memory_mb", "available_memory_mb", "total_disk_mb", "available_disk_mb", "gpus",
    "has_docker", "docker_version", "has_python", "python_version",
]  # fmt: skip
SEED_GPU_KEYS = ["index", "name", "vendor", "memory_mb", "uuid", "driver_version"]
UNAME_TO_SEED = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "i386": "386", "armv7l": "arm"}
GIB = 2**30

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def no_engine() -> str | None:
    return None


def probe(tmp_path: Path, nvml: object | None = None, docker: str | None = None) -> Any:
    return probe_host(tmp_path, nvml if nvml is not None else FailingNvml(), lambda: docker)


def meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise AssertionError(f"no {key} in /proc/meminfo")


# --- stand-in NVML libraries ---


@dataclass
class FakeDevice:
    name: str
    memory: int
    uuid: str
    mig: list[FakeDevice] | None = None  # None: MIG not supported
    mig_slots: int = 7


@dataclass
class MemoryInfo:
    total: int
    free: int
    used: int


@dataclass
class FakeNvml:
    """The pynvml functions the probe calls, over a list of devices; errors are pynvml's own."""

    devices: list[FakeDevice]
    driver: str = "550.54.15"
    NVMLError: type[pynvml.NVMLError] = pynvml.NVMLError
    calls: list[str] = field(default_factory=list)
    initialised: int = 0

    def nvmlInit(self) -> None:
        self.calls.append("init")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")
        self.initialised -= 1

    def _check(self) -> None:
        if self.initialised <= 0:
            raise pynvml.NVMLError_Uninitialized()

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        self._check()
        if not 0 <= index < len(self.devices):
            raise pynvml.NVMLError_InvalidArgument()
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: FakeDevice) -> str:
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> MemoryInfo:
        return MemoryInfo(handle.memory, handle.memory, 0)

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> str:
        return handle.uuid

    def nvmlDeviceGetMigMode(self, handle: FakeDevice) -> list[int]:
        if handle.mig is None:
            raise pynvml.NVMLError_NotSupported()
        return [pynvml.NVML_DEVICE_MIG_ENABLE] * 2

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeDevice) -> int:
        if handle.mig is None:
            raise pynvml.NVMLError_NotSupported()
        return handle.mig_slots

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeDevice, index: int) -> FakeDevice:
        if handle.mig is None:
            raise pynvml.NVMLError_NotSupported()
        if index >= len(handle.mig):
            raise pynvml.NVMLError_NotFound()  # an empty slot
        return handle.mig[index]


class FailingNvml:
    """No driver: nvmlInit fails as pynvml's does without libnvidia-ml."""

    NVMLError = pynvml.NVMLError

    def __init__(self) -> None:
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1


def two_gpus_one_mig() -> FakeNvml:
    mig = FakeDevice("NVIDIA A30 MIG 1g.6gb", 6 * GIB, "MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f")
    return FakeNvml(
        [
            FakeDevice("NVIDIA A30", 8 * GIB, "GPU-1ac935ba-4f5b-4bc1-8d3e-2b2a3a0e6a11", mig=[mig]),
            FakeDevice("NVIDIA T400", 2 * GIB, "GPU-7d0e4b9a-93a0-4c44-b3c2-55f1c0de2f02"),
        ]
    )


# --- the host's own figures ---


def test_data_has_exactly_the_seeds_keys_in_order(tmp_path: Path) -> None:
    data = msgspec.to_builtins(probe(tmp_path).capabilities)
    assert list(data) == SEED_KEYS


def test_a_gpu_has_the_seeds_keys_first(tmp_path: Path) -> None:
    data = msgspec.to_builtins(probe(tmp_path, two_gpus_one_mig()).capabilities)
    for gpu in data["gpus"]:
        assert list(gpu)[: len(SEED_GPU_KEYS)] == SEED_GPU_KEYS


def test_cpu_threads_is_the_logical_cpu_count(tmp_path: Path) -> None:
    assert probe(tmp_path).capabilities.cpu_threads == os.cpu_count()


@linux_only
def test_cpu_cores_are_the_physical_cores_of_proc_cpuinfo(tmp_path: Path) -> None:
    caps = probe(tmp_path).capabilities
    assert caps.cpu_cores is not None and caps.cpu_threads is not None
    assert 1 <= caps.cpu_cores <= caps.cpu_threads
    cores, physical = set(), None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    if not cores:
        pytest.skip("/proc/cpuinfo names no cores here")
    assert caps.cpu_cores == len(cores)


@linux_only
def test_cpu_model_is_the_model_name_of_proc_cpuinfo(tmp_path: Path) -> None:
    names = [
        line.partition(":")[2].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    if not names:
        pytest.skip("/proc/cpuinfo has no model name on this architecture")
    assert probe(tmp_path).capabilities.cpu_model == names[0]


@linux_only
def test_total_memory_is_memtotal_within_one_percent(tmp_path: Path) -> None:
    caps = probe(tmp_path).capabilities
    expected = meminfo_kib("MemTotal") / 1024
    assert caps.total_memory_mb == pytest.approx(expected, rel=0.01)
    assert caps.available_memory_mb is not None
    assert 0 < caps.available_memory_mb <= caps.total_memory_mb


def test_platform_architecture_and_kernel_are_the_hosts(tmp_path: Path) -> None:
    caps = probe(tmp_path).capabilities
    machine = os.uname().machine
    if machine not in UNAME_TO_SEED:
        pytest.skip(f"no expected seed name for {machine}")
    assert caps.architecture == UNAME_TO_SEED[machine]
    assert caps.kernel_version == os.uname().release
    assert caps.platform == {"linux": "linux", "darwin": "darwin"}.get(sys.platform)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "amd64"),
        ("AMD64", "amd64"),  # Windows
        ("aarch64", "arm64"),
        ("arm64", "arm64"),  # macOS
        ("i686", "386"),
        ("x86", "386"),
        ("armv7l", "arm"),
        ("armv6l", "arm"),
        ("riscv64", None),
        ("ppc64le", None),
        ("", None),
    ],
)
def test_machine_names_map_to_the_seeds_architectures_or_null(machine: str, expected: str | None) -> None:
    assert architecture_name(machine) == expected


def test_an_unknown_architecture_is_null_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "s390x")
    caps, notes = probe(tmp_path)
    assert caps.architecture is None
    assert any("s390x" in note for note in notes)


def test_disk_figures_are_the_data_dirs_filesystem(tmp_path: Path) -> None:
    caps = probe(tmp_path).capabilities
    stat = os.statvfs(tmp_path)
    assert caps.total_disk_mb == stat.f_blocks * stat.f_frsize // 2**20
    # others write meanwhile: within 1% of the filesystem
    tolerance = max(64, caps.total_disk_mb // 100)
    assert abs(caps.available_disk_mb - stat.f_bavail * stat.f_frsize // 2**20) <= tolerance


def test_a_missing_data_dir_gives_null_disk_figures_and_a_note(tmp_path: Path) -> None:
    caps, notes = probe(tmp_path / "gone")
    assert (caps.total_disk_mb, caps.available_disk_mb) == (None, None)
    assert any("gone" in note for note in notes)


def test_python_is_this_interpreter(tmp_path: Path) -> None:
    caps = probe(tmp_path).capabilities
    assert caps.has_python is True
    assert caps.python_version == platform.python_version()


# --- GPUs through NVML stand-ins ---


def test_two_gpus_and_a_mig_device_are_listed(tmp_path: Path) -> None:
    nvml = two_gpus_one_mig()
    caps, notes = probe(tmp_path, nvml)
    assert caps.gpus == [
        Gpu(0, "NVIDIA A30", "nvidia", 8192, "GPU-1ac935ba-4f5b-4bc1-8d3e-2b2a3a0e6a11", "550.54.15",
            mig_enabled=True),
        Gpu(0, "NVIDIA A30 MIG 1g.6gb", "nvidia", 6144, "MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f",
            "550.54.15", mig_parent=0),
        Gpu(1, "NVIDIA T400", "nvidia", 2048, "GPU-7d0e4b9a-93a0-4c44-b3c2-55f1c0de2f02", "550.54.15"),
    ]  # fmt: skip
    # NotSupported (no MIG on the T400) and NotFound (empty MIG slots) are normal, not worth a note
    assert [note for note in notes if note.startswith("gpus")] == []
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_answering_bytes_gives_text(tmp_path: Path) -> None:
    nvml = two_gpus_one_mig()
    nvml.driver = b"470.82.01"  # type: ignore[assignment]  # older pynvml
    nvml.devices[1].name = b"Tesla T4"  # type: ignore[assignment]
    caps = probe(tmp_path, nvml).capabilities
    assert caps.gpus[2].name == "Tesla T4"
    assert {gpu.driver_version for gpu in caps.gpus} == {"470.82.01"}


def test_nvml_failing_at_init_gives_no_gpus_and_the_reason(tmp_path: Path) -> None:
    nvml = FailingNvml()
    caps, notes = probe(tmp_path, nvml)
    assert caps.gpus == []
    assert any("NVML Shared Library Not Found" in note for note in notes)
    assert nvml.shutdowns == 0  # only after a successful init


def test_nvml_failing_after_init_gives_no_gpus_and_still_shuts_down(tmp_path: Path) -> None:
    nvml = two_gpus_one_mig()

    def broken() -> int:
        raise pynvml.NVMLError_GpuIsLost()

    nvml.nvmlDeviceGetCount = broken  # type: ignore[method-assign]
    caps, notes = probe(tmp_path, nvml)
    assert caps.gpus == []
    assert any("GPU is lost" in note for note in notes)
    assert nvml.calls == ["init", "shutdown"]


def test_one_unreadable_figure_is_null_not_the_whole_gpu(tmp_path: Path) -> None:
    nvml = two_gpus_one_mig()

    def no_uuid(handle: FakeDevice) -> str:
        raise pynvml.NVMLError_NoPermission()

    nvml.nvmlDeviceGetUUID = no_uuid  # type: ignore[method-assign]
    caps, notes = probe(tmp_path, nvml)
    assert [gpu.uuid for gpu in caps.gpus] == [None, None, None]
    assert [gpu.memory_mb for gpu in caps.gpus] == [8192, 6144, 2048]
    assert any("uuid" in note and "Insufficient Permissions" in note for note in notes)


def test_pynvml_not_installed_gives_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    caps, notes = probe_host(tmp_path, None, no_engine)
    assert caps.gpus == []
    assert any("NVML is not installed" in note for note in notes)


def test_the_real_pynvml_without_a_driver_gives_no_gpus(tmp_path: Path) -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    caps, notes = probe_host(tmp_path, None, no_engine)
    assert caps.gpus == []
    assert any(note.startswith("gpus: NVML unavailable") for note in notes)


# --- Docker ---


def test_has_docker_follows_the_engines_answer(tmp_path: Path) -> None:
    caps = probe(tmp_path, docker="27.3.1").capabilities
    assert (caps.has_docker, caps.docker_version) == (True, "27.3.1")
    caps, notes = probe(tmp_path, docker=None)
    assert (caps.has_docker, caps.docker_version) == (False, None)
    assert "docker: no engine answered" in notes


def test_no_engine_at_the_url_gives_none_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    assert docker_version_from(f"unix://{tmp_path}/docker.sock") is None
    assert docker_version_from("tcp://127.0.0.1:9") is None
    assert docker_version_from("nonsense://x") is None
    assert time.monotonic() - started < 2 * capabilities.DOCKER_TIMEOUT


def test_the_engines_version_is_read(docker_host: str, docker_client: Any) -> None:
    assert docker_version_from(docker_host) == docker_client.version()["Version"]


def test_the_default_engine_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert default_docker_url() == "tcp://127.0.0.1:2375"
    monkeypatch.delenv("DOCKER_HOST")
    sock = tmp_path / "docker.sock"
    monkeypatch.setattr(capabilities, "DEFAULT_DOCKER_SOCKET", sock)
    assert default_docker_url() is None
    sock.touch()
    assert default_docker_url() == f"unix://{sock}"


# --- the summary ---


def test_the_summary_names_the_figures_and_the_reasons(tmp_path: Path) -> None:
    caps, notes = probe(tmp_path, FailingNvml(), docker="27.3.1")
    text = summary(caps, notes)
    assert f"{caps.platform} {caps.architecture}" in text
    assert f"{caps.total_memory_mb} MB" in text
    assert "docker:    27.3.1" in text
    assert "gpus:      none" in text
    assert "NVML Shared Library Not Found" in text
    text = summary(probe(tmp_path, two_gpus_one_mig()).capabilities)
    assert "GPU 0: NVIDIA A30, 8192 MB" in text
    assert "GPU 0 MIG 0: NVIDIA A30 MIG 1g.6gb, 6144 MB" in text
    assert "GPU 1: NVIDIA T400, 2048 MB" in text


# --- the cache ---


class BlockingNvml(FailingNvml):
    """nvmlInit waits until released: a probe stays in flight as long as the test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def nvmlInit(self) -> None:
        self.entered.set()
        self.release.wait(10)
        super().nvmlInit()


def test_the_cache_answers_at_once_while_a_probe_hangs(tmp_path: Path) -> None:
    nvml = BlockingNvml()
    cache = CapabilityCache(tmp_path, nvml=nvml)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nvml.release.set()
            await nursery.start(cache.run, 0.01, 0.01)
            first = await cache.current()
            assert first.capabilities.gpus == []
            nvml.release.clear()
            nvml.entered.clear()
            await trio.to_thread.run_sync(nvml.entered.wait, 5)  # the next probe hangs in NVML
            started = time.perf_counter()
            for _ in range(100):
                report = await cache.current()
            assert time.perf_counter() - started < 0.1
            assert report.capabilities.platform == first.capabilities.platform
            nvml.release.set()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_started_comes_after_the_first_probe(tmp_path: Path) -> None:
    cache = CapabilityCache(tmp_path, nvml=two_gpus_one_mig())

    async def main() -> None:
        assert cache.report is None
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            assert cache.report is not None
            assert len(cache.report.capabilities.gpus) == 3
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_usage_figures_are_refreshed_between_full_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = two_gpus_one_mig()
    cache = CapabilityCache(tmp_path, nvml=nvml)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run, 3600, 0.01)
            monkeypatch.setattr(
                capabilities,
                "probe_usage",
                lambda data_dir, notes=None: capabilities.Usage(1, 2, 3, 4),
            )
            with trio.fail_after(5):
                while (await cache.current()).capabilities.available_disk_mb != 4:
                    await trio.sleep(0.01)
            caps = (await cache.current()).capabilities
            assert (caps.total_memory_mb, caps.available_memory_mb, caps.total_disk_mb) == (1, 2, 3)
            assert len(caps.gpus) == 3  # the rest is the full probe's
            assert nvml.calls == ["init", "shutdown"]  # no full probe meanwhile
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_cache_asks_the_engine_at_its_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def version(url: str) -> str:
        asked.append(url)
        return "26.1.0"

    monkeypatch.setattr(capabilities, "docker_version_from", version)
    cache = CapabilityCache(tmp_path, nvml=FailingNvml())
    assert trio.run(cache.refresh).capabilities.has_docker is False
    assert asked == []  # no engine configured: nothing asked
    cache.docker_url = "unix:///run/engine.sock"
    assert trio.run(cache.refresh).capabilities.docker_version == "26.1.0"
    assert asked == ["unix:///run/engine.sock"]
