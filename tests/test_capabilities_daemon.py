"""system:capabilities through a real berthd."""

from __future__ import annotations

import os
import platform

from berthd.host.capabilities import architecture_name
from tests.daemon_proc import Berthd
from tests.test_capabilities import SEED_KEYS


def test_capabilities_answer_with_exactly_the_seeds_keys(berthd: Berthd) -> None:
    answer = berthd.call("system:capabilities")
    assert answer.ok, answer
    assert list(answer.data) == SEED_KEYS
    assert answer.data["cpu_threads"] == os.cpu_count()
    assert answer.data["architecture"] == architecture_name(platform.machine())
    assert answer.data["python_version"] == platform.python_version()
    assert answer.data["has_python"] is True


def test_capabilities_without_gpus_or_engine_say_so(berthd: Berthd) -> None:
    answer = berthd.call("system:capabilities")
    if answer.data["gpus"]:
        return  # this machine has an NVIDIA driver
    assert "gpus:      none" in answer.output
    assert "NVML" in answer.output  # the reason, for people; not in data


def test_capabilities_are_listed_in_the_help(berthd: Berthd) -> None:
    assert "system:capabilities" in berthd.call("commands").data
    assert "system:capabilities" in berthd.call("system:help").output


def test_the_json_form_answers_the_same_keys(berthd: Berthd) -> None:
    answer = berthd.call(["system:capabilities"], {})
    assert answer.ok, answer
    assert list(answer.data) == SEED_KEYS
