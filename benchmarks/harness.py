"""The benchmark harness's pure logic: repeated timing, medians, same-run ratios, slopes, tables.

Every figure the benchmarks report is a median over at least ``MIN_REPEATS`` runs and
comes with a baseline measured in the same process on the same data. Timed sides run
interleaved (every side once per round, in a rotating order) so that load from other
processes on a shared machine hits all sides alike, and a ratio is the median of the
per-round ratios rather than the ratio of two medians taken at different moments.

Nothing here reads the machine or the lake; ``tests/test_bench_harness.py`` covers it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

MIN_REPEATS = 3


def median(values: Sequence[float]) -> float:
    """The median of at least one finite value."""
    if not values:
        raise ValueError("median of no values")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"median of non-finite values: {list(values)}")
    return float(statistics.median(values))


def median_or_nan(values: Sequence[float]) -> float:
    """The median, or NaN when any run's figure is undefined (e.g. an AUC on rows of one
    class): a figure undefined in one run is not reported from the others."""
    if any(math.isnan(v) for v in values):
        return math.nan
    return median(values)


def ratio(candidate: float, baseline: float) -> float:
    """``candidate / baseline``; a zero or non-finite baseline has no ratio (NaN)."""
    if baseline == 0 or not math.isfinite(baseline) or not math.isfinite(candidate):
        return math.nan
    return candidate / baseline


def paired_ratio(candidates: Sequence[float], baselines: Sequence[float]) -> float:
    """Median over rounds of ``candidate[i] / baseline[i]`` (the rounds ran back to back);
    NaN when a round's ratio is undefined (a zero or undefined side)."""
    if len(candidates) != len(baselines) or not candidates:
        raise ValueError(
            f"paired samples need equal, non-zero lengths: {len(candidates)} vs {len(baselines)}"
        )
    return median_or_nan([ratio(c, b) for c, b in zip(candidates, baselines, strict=True)])


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): 1.0 means y grows linearly with x."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a slope needs at least two (x, y) points, got {len(xs)}, {len(ys)}")
    if any(v <= 0 for v in (*xs, *ys)):
        raise ValueError("log-log slope needs positive values")
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((x - mx) ** 2 for x in lx)
    if sxx == 0:
        raise ValueError("log-log slope needs at least two distinct x values")
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / sxx


def lift_share(auc: float, oracle_auc: float) -> float:
    """The model's AUC lift over 0.5 as a share of the oracle's lift (1.0 = as good as truth)."""
    return ratio(auc - 0.5, oracle_auc - 0.5)


def check_repeats(repeats: int) -> int:
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be >= {MIN_REPEATS} (every figure is a median), "
                         f"got {repeats}")
    return repeats


Clock = Callable[[], float]


def time_once(fn: Callable[[], object], clock: Clock = time.perf_counter) -> float:
    started = clock()
    fn()
    return clock() - started


def time_interleaved(
    sides: Mapping[str, Callable[[], object]],
    repeats: int,
    clock: Clock = time.perf_counter,
    before: Callable[[str], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each side per round; each round runs every side once, and the order
    rotates from round to round so no side always runs first (warm caches, drift).
    ``before(side)`` runs untimed ahead of each timed call (e.g. to clear an output)."""
    check_repeats(repeats)
    names = list(sides)
    if not names:
        raise ValueError("nothing to time")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if before is not None:
                before(name)
            seconds[name].append(time_once(sides[name], clock))
    return seconds


def rates(amount: float, seconds: Sequence[float]) -> list[float]:
    """Per-run throughput (``amount`` per second) of runs that each processed ``amount``."""
    if any(s <= 0 for s in seconds):
        raise ValueError(f"non-positive durations: {list(seconds)}")
    return [amount / s for s in seconds]


# ------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Figure:
    """One row of the results table: a median, its same-run baseline and their ratio."""

    name: str
    value: float
    unit: str
    runs: int
    baseline: str = ""
    """What the ratio compares against (empty: the figure is itself a same-run ratio)."""
    baseline_value: float | None = None
    ratio: float | None = None
    note: str = ""


@dataclass
class PartResult:
    """One benchmark part: its figures, or the reason it did not run."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_run: str | None = None
    seconds: float = 0.0

    @classmethod
    def skipped(cls, key: str, title: str, reason: str) -> PartResult:
        return cls(key=key, title=title, not_run=reason)


def format_number(value: float | None) -> str:
    """Compact, unit-free rendering: thousands separators for big values, 3 significant
    digits for small ones; '—' for no value, 'n/a' for NaN."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


TABLE_HEADER = ("figure", "median", "unit", "runs", "baseline (same run)", "baseline median",
                "ratio", "note")


def figure_row(figure: Figure) -> tuple[str, ...]:
    return (
        figure.name,
        format_number(figure.value),
        figure.unit,
        str(figure.runs),
        figure.baseline or "—",
        format_number(figure.baseline_value),
        format_number(figure.ratio),
        figure.note,
    )


def render_part(part: PartResult) -> str:
    """A part as markdown: a heading, then its table, its notes, or 'not run: <reason>'."""
    lines = [f"## {part.key}. {part.title}", ""]
    if part.not_run is not None:
        lines += [f"not run: {part.not_run}", ""]
        return "\n".join(lines)
    lines.append("| " + " | ".join(TABLE_HEADER) + " |")
    lines.append("|" + "---|" * len(TABLE_HEADER))
    for figure in part.figures:
        lines.append("| " + " | ".join(_cell(c) for c in figure_row(figure)) + " |")
    lines.append("")
    for note in part.notes:
        lines.append(f"- {note}")
    if part.notes:
        lines.append("")
    lines.append(f"_part wall time: {part.seconds:.0f} s_")
    lines.append("")
    return "\n".join(lines)


def render_report(header: Sequence[tuple[str, str]], parts: Sequence[PartResult]) -> str:
    """The whole results.md: a machine/run header (key, value pairs), then every part."""
    lines = ["# mtlrec benchmark results", ""]
    lines += [f"- **{key}**: {value}" for key, value in header]
    lines.append("")
    lines += [render_part(part) for part in parts]
    return "\n".join(lines).rstrip() + "\n"
