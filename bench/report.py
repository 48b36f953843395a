"""How figures are printed: a titled table per benchmark, and a comparison table of ratios and goals.

A goal's status is printed for the reader; nothing fails on it (timings vary too much between machines).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    text: str
    met: Callable[[float], bool] | None = None

    def status(self, value: float) -> str:
        if self.met is None:
            return "-"
        return "met" if self.met(value) else "NOT met"


NO_GOAL = Goal("none set (baseline for tracking)")


@dataclass(frozen=True)
class Comparison:
    what: str
    value: float
    goal: Goal
    unit: str = "x"

    def row(self) -> list[str]:
        if isinstance(self.value, int):
            shown = f"{self.value:,} {self.unit}"
        elif self.unit != "x":
            shown = f"{self.value:.3f} {self.unit}"
        else:
            shown = f"{self.value:.1f}x" if self.value >= 1 else f"{self.value:.2g}x"
        return [self.what, shown, self.goal.text, self.goal.status(self.value)]


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest rank on sorted samples: p99 of 5,000 is the 4,950th smallest."""
    if not samples:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(samples)))
    return samples[rank - 1]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else math.nan


LATENCY_HEADERS = ["what", "n", "p50", "p90", "p99", "max", "mean"]


def latency_row(what: str, samples: Sequence[float], requested: int) -> list[str]:
    """`samples` sorted, in seconds; shown in ms under `LATENCY_HEADERS`."""
    mean = sum(samples) / len(samples) if samples else math.nan
    last = samples[-1] if samples else math.nan
    return [what, f"{len(samples)}/{requested}", ms(percentile(samples, 50)), ms(percentile(samples, 90)),
            ms(percentile(samples, 99)), ms(last), ms(mean)]  # fmt: skip


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def mib(size: int) -> str:
    return f"{size / 2**20:.1f}"


def print_title(title: str, *notes: str) -> None:
    print()
    print(f"== {title} ==")
    for note in notes:
        print(f"   {note}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """The first column left-aligned (names), the others right-aligned (figures)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(rest, widths[1:], strict=True))]
        return "  ".join(parts).rstrip()

    print()
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def print_comparisons(comparisons: Sequence[Comparison]) -> None:
    headers = ["comparison", "figure", "goal", "status"]
    widths = [
        max(len(c) for c in column) for column in zip(headers, *(c.row() for c in comparisons), strict=True)
    ]
    print()
    for cells in [headers, ["-" * w for w in widths], *(c.row() for c in comparisons)]:
        what, figure, goal, status = cells
        print(
            f"{what.ljust(widths[0])}  {figure.rjust(widths[1])}  {goal.ljust(widths[2])}  {status}".rstrip()
        )
