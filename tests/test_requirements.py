"""Requirements: matched against this host's capabilities; every unmet one named, with what there is."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from berthd.host.capabilities import probe_host
from berthd.host.requirements import parse_requirement_pair, unmet
from tests.daemon_proc import Berthd
from tests.test_capabilities import GIB, FailingNvml, FakeDevice, FakeNvml, two_gpus_one_mig


def test_gpu_matching_with_a_stand_in_nvml_of_two_gpus(tmp_path: Path) -> None:
    caps = probe_host(tmp_path, nvml=two_gpus_one_mig(), docker_version=lambda: None).capabilities
    assert unmet({"requires_gpu": "true"}, caps) == []
    assert unmet({"min_gpu_memory_mb": "5000"}, caps) == []  # the 6 GB MIG slice has it, the 2 GB GPU not
    too_much = unmet({"min_gpu_memory_mb": "9000"}, caps)
    assert too_much and "needs one GPU with 9000 MB" in too_much[0]
    assert unmet({"requires_gpu": "true", "gpu_vendor": "nvidia"}, caps) == []
    assert "no amd GPU" in unmet({"requires_gpu": "true", "gpu_vendor": "amd"}, caps)[0]


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


# The standalone-services seed's capability objects, verbatim: its schema, Example 3 and Example 4.
SEED_SCHEMA = """{
  "platform": "linux",
  "architectures": ["amd64"],
  "min_memory_mb": 512,
  "min_cpu_cores": 1,
  "min_disk_mb": 100,
  "requires_gpu": false,
  "gpu_vendor": "nvidia",
  "min_gpu_memory_mb": 4096
}"""
SEED_EXAMPLE_3 = """{
    "platform": "linux",
    "architectures": ["amd64"],
    "min_memory_mb": 1024,
    "min_cpu_cores": 2
  }"""
SEED_EXAMPLE_4 = """{
    "platform": "linux",
    "architectures": ["amd64"],
    "min_memory_mb": 8192,
    "min_cpu_cores": 4,
    "requires_gpu": true,
    "gpu_vendor": "nvidia",
    "min_gpu_memory_mb": 8192
  }"""


def require_options(capabilities: str) -> list[str]:
    """A seed capabilities object as `--require KEY=VALUE` words: lists comma-joined, booleans as JSON."""
    words: list[str] = []
    for key, value in msgspec.json.decode(capabilities).items():
        if isinstance(value, list):
            text = ",".join(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        words += ["--require", f"{key}={text}"]
    return words


def test_the_seeds_schema_example_is_accepted_on_a_host_without_gpus(berthd: Berthd) -> None:
    # requires_gpu=false: the vendor and GPU memory say which GPU would do, not that one is needed
    caps = berthd.call("system:capabilities").data
    schema = SEED_SCHEMA.replace('["amd64"]', f'["{caps["architecture"]}"]')  # this host's own
    answer = berthd.call(["apps:from-local", "schema", "/bin/true", *require_options(schema)])
    assert answer.ok, answer.output
    assert berthd.call("apps:info schema").data["settings"]["requirements"] == {
        "platform": "linux",
        "architectures": caps["architecture"],
        "min_memory_mb": "512",
        "min_cpu_cores": "1",
        "min_disk_mb": "100",
        "requires_gpu": "false",
        "gpu_vendor": "nvidia",
        "min_gpu_memory_mb": "4096",
    }


def test_gpu_vendor_any_is_a_value(berthd: Berthd) -> None:
    berthd.call("apps:create gpu-any")
    assert berthd.call(["apps:set", "gpu-any", "require.gpu_vendor", "any"]).ok
    assert berthd.call("apps:info gpu-any").data["settings"]["requirements"] == {"gpu_vendor": "any"}
    needs = berthd.call(["apps:from-local", "needs-gpu", "/bin/true", "--require", "requires_gpu=true",
                         "--require", "gpu_vendor=any"])  # fmt: skip
    assert needs.error == "incompatible"
    assert "no GPU: needs one, host has none" in needs.output


def test_a_vendor_constrains_only_when_a_gpu_is_required(tmp_path: Path) -> None:
    caps = probe_host(tmp_path, nvml=two_gpus_one_mig(), docker_version=lambda: None).capabilities
    none = probe_host(tmp_path, nvml=FailingNvml(), docker_version=lambda: None).capabilities
    assert unmet({"gpu_vendor": "amd"}, caps) == []
    assert unmet({"requires_gpu": "false", "gpu_vendor": "amd", "min_gpu_memory_mb": "99999"}, caps) == []
    assert unmet({"requires_gpu": "false", "gpu_vendor": "nvidia", "min_gpu_memory_mb": "4096"}, none) == []
    assert unmet({"requires_gpu": "true", "gpu_vendor": "any"}, caps) == []
    assert unmet({"requires_gpu": "true", "gpu_vendor": "any"}, none) == ["no GPU: needs one, host has none"]
    # GPU memory asked for without a word on requires_gpu: a GPU is needed
    assert unmet({"min_gpu_memory_mb": "1024"}, none) == ["no GPU: needs one, host has none"]


def test_the_seeds_gpu_example_is_judged_by_its_gpus(tmp_path: Path) -> None:
    requirements = dict(parse_requirement_pair(w) for w in require_options(SEED_EXAMPLE_4)[1::2])
    gpu_part = {k: v for k, v in requirements.items() if "gpu" in k}
    assert gpu_part == {"requires_gpu": "true", "gpu_vendor": "nvidia", "min_gpu_memory_mb": "8192"}
    seed_gpu = FakeNvml(
        [FakeDevice("NVIDIA GeForce RTX 3080", 10 * GIB, "GPU-0d3c9d6e-5c1a-4f4e-9f3e-1f2d3c4b5a69")]
    )
    caps = probe_host(tmp_path, nvml=seed_gpu, docker_version=lambda: None).capabilities
    assert unmet(gpu_part, caps) == []  # the seed's RTX 3080, 10 GB
    small = probe_host(tmp_path, nvml=two_gpus_one_mig(), docker_version=lambda: None).capabilities
    assert unmet(gpu_part, small) == [
        "not enough GPU memory: needs one GPU with 8192 MB, host's largest has 6144 MB"
    ]
    none = probe_host(tmp_path, nvml=FailingNvml(), docker_version=lambda: None).capabilities
    assert unmet(gpu_part, none) == ["no nvidia GPU: needs one, host has none"]


def test_the_seeds_examples_are_valid_requirements(berthd: Berthd) -> None:
    for name, capabilities in (("ex-three", SEED_EXAMPLE_3), ("ex-four", SEED_EXAMPLE_4)):
        answer = berthd.call(["apps:from-local", name, "/bin/true", *require_options(capabilities)])
        # accepted as requirements: this host may lack what they ask, never a word of them is refused
        assert answer.ok or answer.error == "incompatible", answer.output
        if not answer.ok:
            assert all(not p.startswith("invalid") for p in answer.data["unmet"])
    four = berthd.call(["apps:from-local", "ex-four", "/bin/true", *require_options(SEED_EXAMPLE_4)])
    assert "no nvidia GPU: needs one, host has none" in four.data["unmet"]
