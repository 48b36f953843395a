"""Requirements: matched against this host's capabilities; every unmet one named, with what there is."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from berthd.host.capabilities import probe_host
from berthd.host.requirements import unmet
from tests.daemon_proc import Berthd
from tests.test_capabilities import FailingNvml, two_gpus_one_mig


def test_gpu_matching_with_a_stand_in_nvml_of_two_gpus(tmp_path: Path) -> None:
    caps = probe_host(tmp_path, nvml=two_gpus_one_mig(), docker_version=lambda: None).capabilities
    assert unmet({"requires_gpu": "true"}, caps) == []
    assert unmet({"min_gpu_memory_mb": "5000"}, caps) == []  # the 6 GB MIG slice has it, the 2 GB GPU not
    too_much = unmet({"min_gpu_memory_mb": "9000"}, caps)
    assert too_much and "needs one GPU with 9000 MB" in too_much[0]
    assert unmet({"gpu_vendor": "nvidia"}, caps) == []
    assert "no amd GPU" in unmet({"gpu_vendor": "amd"}, caps)[0]


def test_every_unmet_requirement_is_named(tmp_path: Path) -> None:
    caps = probe_host(tmp_path, nvml=FailingNvml(), docker_version=lambda: None).capabilities
    other = "arm64" if caps.architecture == "amd64" else "amd64"
    problems = unmet(
        {
            "platform": "darwin",
            "architectures": other,
            "min_memory_mb": str(10**9),
            "min_cpu_cores": "4096",
            "min_disk_mb": str(10**12),
            "requires_gpu": "true",
        },
        caps,
    )
    assert problems[0] == "incompatible platform: needs darwin, host is linux"
    assert problems[1] == f"incompatible architecture: needs {other}, host is {caps.architecture}"
    assert problems[2].startswith(f"not enough memory available: needs {10**9} MB, host has ")
    assert problems[3].startswith("not enough CPU cores: needs 4096, host has ")
    assert problems[4].startswith("not enough disk available")
    assert problems[5] == "no GPU: needs one, host has none"
    assert unmet({"platform": "any", "architectures": f"{caps.architecture},{other}"}, caps) == []


def test_an_incompatible_app_is_refused_when_defined(berthd: Berthd) -> None:
    answer = berthd.call(
        [
            "apps:from-local",
            "mac-only",
            "/bin/true",
            "--require",
            "platform=darwin",
            "--require",
            "requires_gpu=true",
        ]
    )
    assert (answer.ok, answer.error) == (False, "incompatible")
    assert "incompatible platform: needs darwin, host is linux" in answer.output
    assert "no GPU: needs one, host has none" in answer.output
    assert answer.data["unmet"] and len(answer.data["unmet"]) == 2
    assert berthd.call("apps:list").data == []


def test_requirements_are_checked_again_at_start_and_run(berthd: Berthd) -> None:
    assert berthd.call(["apps:from-local", "later", "/bin/sleep", "--", "1000"]).ok
    # the host changed its mind, as far as berthd can tell: the app now asks for more than there is
    berthd.call(["apps:create", "x"])
    answer = berthd.call(["apps:set", "later", "require.min_cpu_cores", "100000"])
    assert answer.error == "incompatible" and "not enough CPU cores" in answer.output
    assert berthd.call("apps:info later").data["settings"].get("requirements", {}) == {}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("colour=blue", "unknown requirement 'colour'"),
        ("min_memory_mb=lots", "invalid requirement min_memory_mb"),
        ("min_cpu_cores=-2", "invalid requirement min_cpu_cores: must not be negative"),
        ("architectures=amd64,vax", "unknown architecture 'vax'"),
        ("requires_gpu=perhaps", "invalid requirement requires_gpu"),
        ("platform", "expected KEY=VALUE"),
    ],
)
def test_bad_requirements_name_the_key(berthd: Berthd, pair: str, message: str) -> None:
    answer = berthd.call(["apps:from-local", "bad", "/bin/true", "--require", pair])
    assert (answer.ok, answer.error) == (False, "invalid_argument")
    assert message in answer.output


def test_capabilities_through_berthd_match_the_probe(berthd: Berthd) -> None:
    data = berthd.call("system:capabilities").data
    direct = msgspec.to_builtins(
        probe_host(berthd.data_dir, nvml=FailingNvml(), docker_version=lambda: None).capabilities
    )
    for key in ("platform", "architecture", "kernel_version", "cpu_cores", "cpu_threads", "total_memory_mb"):
        assert data[key] == direct[key]
