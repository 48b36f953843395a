"""What an app needs of its host: the standalone-services seed's requirement keys, validated."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from berthd.errors import CommandError, invalid_argument

if TYPE_CHECKING:
    from berthd.host.capabilities import Capabilities, CapabilityCache

PLATFORMS = ("linux", "darwin", "windows")
ARCHITECTURES = ("amd64", "arm64", "386", "arm")
GPU_VENDORS = ("nvidia", "amd", "intel", "any")
TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


def _platform(value: str) -> str:
    value = value.strip().lower()
    if value != "any" and value not in PLATFORMS:
        raise ValueError(f"expected one of {', '.join(PLATFORMS)} or any")
    return value


def _architectures(value: str) -> str:
    items = [item.strip().lower() for item in value.split(",")]
    if items == ["any"]:
        return "any"
    bad = [item for item in items if item not in ARCHITECTURES]
    if bad or not items:
        raise ValueError(
            f"unknown architecture {bad[0]!r}; expected a comma list of {', '.join(ARCHITECTURES)}"
        )
    return ",".join(dict.fromkeys(items))


def _non_negative_int(value: str) -> str:
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return str(number)


def _boolean(value: str) -> str:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return "true"
    if word in FALSE_WORDS:
        return "false"
    raise ValueError(f"expected true or false, got {value!r}")


def _gpu_vendor(value: str) -> str:
    value = value.strip().lower()
    if value not in GPU_VENDORS:
        raise ValueError(f"expected one of {', '.join(GPU_VENDORS)}")
    return value


REQUIREMENT_KEYS: dict[str, Callable[[str], str]] = {
    "platform": _platform,
    "architectures": _architectures,
    "min_memory_mb": _non_negative_int,
    "min_cpu_cores": _non_negative_int,
    "min_disk_mb": _non_negative_int,
    "requires_gpu": _boolean,
    "gpu_vendor": _gpu_vendor,
    "min_gpu_memory_mb": _non_negative_int,
}


def parse_requirement(key: str, value: str) -> tuple[str, str]:
    """One `KEY=VALUE` requirement, normalised; an unknown key or a bad value names the key."""
    parse = REQUIREMENT_KEYS.get(key)
    if parse is None:
        raise invalid_argument(f"unknown requirement {key!r}; known: {', '.join(REQUIREMENT_KEYS)}")
    try:
        return key, parse(value)
    except ValueError as exc:
        raise invalid_argument(f"invalid requirement {key}: {exc}") from None


def parse_requirement_pair(pair: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    if not sep:
        raise invalid_argument(f"invalid requirement {pair!r}: expected KEY=VALUE")
    return parse_requirement(key.strip(), value)


def unmet(requirements: dict[str, str], host: Capabilities, where: str = "host") -> list[str]:
    """Every requirement the capabilities do not meet, each saying what was needed and what there is."""
    problems: list[str] = []
    platform = requirements.get("platform", "any")
    if platform != "any" and host.platform != platform:
        problems.append(f"incompatible platform: needs {platform}, {where} is {host.platform or 'unknown'}")
    architectures = requirements.get("architectures", "any")
    if architectures != "any" and host.architecture not in architectures.split(","):
        problems.append(
            f"incompatible architecture: needs {architectures.replace(',', ' or ')}, "
            f"{where} is {host.architecture or 'unknown'}"
        )
    for key, figure, label in (
        ("min_memory_mb", host.available_memory_mb, "memory available"),
        ("min_cpu_cores", host.cpu_cores, "CPU cores"),
        ("min_disk_mb", host.available_disk_mb, "disk available"),
    ):
        if key in requirements and (figure is None or figure < int(requirements[key])):
            unit = "" if key == "min_cpu_cores" else " MB"
            has = "unknown" if figure is None else f"{figure}{unit}"
            problems.append(f"not enough {label}: needs {requirements[key]}{unit}, {where} has {has}")
    if not needs_gpu(requirements):
        return problems  # the vendor and GPU memory say which GPU would do, not that one is needed
    vendor = requirements.get("gpu_vendor", "any")
    gpus = [gpu for gpu in host.gpus if not gpu.mig_enabled and vendor in ("any", gpu.vendor)]
    if not gpus:
        kind = "GPU" if vendor == "any" else f"{vendor} GPU"
        problems.append(f"no {kind}: needs one, {where} has {len(host.gpus) or 'none'}")
    elif "min_gpu_memory_mb" in requirements:
        wanted = int(requirements["min_gpu_memory_mb"])
        largest = max((gpu.memory_mb or 0 for gpu in gpus), default=0)
        if largest < wanted:
            problems.append(
                f"not enough GPU memory: needs one GPU with {wanted} MB, {where}'s largest has {largest} MB"
            )
    return problems


def needs_gpu(requirements: dict[str, str]) -> bool:
    """The seed's `requires_gpu` decides; left out, GPU memory asked for means a GPU is needed."""
    said = requirements.get("requires_gpu")
    if said is not None:
        return said == "true"
    return int(requirements.get("min_gpu_memory_mb", "0")) > 0


def incompatible(app: str, problems: list[str]) -> CommandError:
    return CommandError(
        "incompatible",
        f"{app} cannot run here:\n" + "\n".join(f"- {p}" for p in problems),
        {"unmet": problems},
    )


async def ensure_compatible(cache: CapabilityCache, app: str, requirements: dict[str, str]) -> None:
    """Refuse (`incompatible`, every unmet requirement named) an app this host cannot run. An app that
    runs through a deploy daemon is judged by the daemon's engine when it is placed, not by this host."""
    if not requirements:
        return
    report = await cache.current()
    problems = unmet(requirements, report.capabilities)
    if problems:
        raise incompatible(app, problems)
