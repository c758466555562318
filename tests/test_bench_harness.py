"""The benchmark harness's pure logic: statistics, interleaved timing, rendering, checks.

No wall-clock thresholds: timing is driven by a fake clock, and every expectation is
computed by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from benchmarks.bench_features import (
    compare_tables,
    duckdb_user_aggregates_sql,
    subset_columns,
)
from benchmarks.bench_quality import oracle_scores
from benchmarks.bench_training import last_epoch_metric
from benchmarks.harness import (
    Figure,
    PartResult,
    check_repeats,
    format_number,
    lift_share,
    loglog_slope,
    median,
    median_or_nan,
    paired_ratio,
    rates,
    ratio,
    render_part,
    render_report,
    time_interleaved,
)
from benchmarks.run import parse_parts, resolve_profile


# ------------------------------------------------------------------ statistics
def test_median_of_odd_and_even_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


@pytest.mark.parametrize("values", [[], [1.0, math.nan, 2.0], [math.inf]])
def test_median_rejects_empty_and_non_finite(values: list[float]) -> None:
    with pytest.raises(ValueError):
        median(values)


def test_ratio_and_missing_baselines() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(1.0, math.nan))


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    # per-round ratios 2, 3, 10 -> 3; the ratio of the medians would be 9 / 1
    candidates, baselines = [2.0, 9.0, 10.0], [1.0, 3.0, 1.0]
    assert paired_ratio(candidates, baselines) == 3.0
    assert median(candidates) / median(baselines) == 9.0


def test_undefined_runs_make_undefined_figures() -> None:
    assert math.isnan(median_or_nan([0.7, math.nan, 0.8]))
    assert median_or_nan([0.7, 0.9, 0.8]) == 0.8
    assert math.isnan(paired_ratio([1.0, 2.0, 3.0], [1.0, 0.0, 1.0]))


def test_paired_ratio_needs_equal_lengths() -> None:
    with pytest.raises(ValueError, match="equal"):
        paired_ratio([1.0, 2.0], [1.0])


def test_loglog_slope_recovers_power_laws() -> None:
    xs = [1e5, 3e5, 1e6]
    assert loglog_slope(xs, [2e-4 * x for x in xs]) == pytest.approx(1.0)
    assert loglog_slope(xs, [x**0.5 for x in xs]) == pytest.approx(0.5)
    assert loglog_slope(xs, [7.0, 7.0, 7.0]) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("xs", "ys"), [([1.0], [1.0]), ([1.0, 2.0], [1.0, 0.0]), ([2.0, 2.0], [1.0, 3.0])]
)
def test_loglog_slope_rejects_degenerate_input(xs: list[float], ys: list[float]) -> None:
    with pytest.raises(ValueError):
        loglog_slope(xs, ys)


def test_lift_share_against_the_oracle() -> None:
    assert lift_share(0.7, 0.9) == pytest.approx(0.5)
    assert lift_share(0.9, 0.9) == pytest.approx(1.0)
    assert lift_share(0.45, 0.75) == pytest.approx(-0.2)


def test_rates_and_repeats() -> None:
    assert rates(100.0, [2.0, 4.0]) == [50.0, 25.0]
    with pytest.raises(ValueError):
        rates(100.0, [0.0])
    assert check_repeats(3) == 3
    with pytest.raises(ValueError, match=">= 3"):
        check_repeats(2)


# ------------------------------------------------------------------ interleaved timing
class FakeClock:
    """Each side advances the clock by its own cost; reading the clock costs nothing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_interleaved_rotates_order_and_times_each_side() -> None:
    clock = FakeClock()
    calls: list[str] = []
    prepared: list[str] = []

    def side(name: str, cost: float) -> None:
        calls.append(name)
        clock.now += cost

    seconds = time_interleaved(
        {"a": lambda: side("a", 1.0), "b": lambda: side("b", 2.0), "c": lambda: side("c", 4.0)},
        repeats=3,
        clock=clock,
        before=prepared.append,
    )
    assert seconds == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [4.0] * 3}
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert prepared == calls  # the untimed hook runs before every timed call


def test_time_interleaved_needs_three_repeats() -> None:
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, repeats=1)


# ------------------------------------------------------------------ rendering
def test_format_number() -> None:
    assert format_number(None) == "—"
    assert format_number(math.nan) == "n/a"
    assert format_number(1234567.8) == "1,234,568"
    assert format_number(123.456) == "123.5"
    assert format_number(0.012345) == "0.0123"
    assert format_number(0.0) == "0"


def test_render_part_table_and_not_run() -> None:
    part = PartResult(
        key="2",
        title="Loader",
        figures=[
            Figure("stream | rows", 1500.0, "rows/s", 3, "pyarrow", 3000.0, 0.5, "note"),
            Figure("share", 0.25, "share", 3),
        ],
        notes=["in-process"],
        seconds=12.4,
    )
    text = render_part(part)
    lines = text.splitlines()
    assert lines[0] == "## 2. Loader"
    assert lines[4] == "| stream \\| rows | 1,500 | rows/s | 3 | pyarrow | 3,000 | 0.5 | note |"
    assert lines[5] == "| share | 0.25 | share | 3 | — | — | — |  |"
    assert "- in-process" in lines
    assert "_part wall time: 12 s_" in lines

    skipped = render_part(PartResult.skipped("5", "Scoring", "the job is missing"))
    assert "not run: the job is missing" in skipped
    assert "|" not in skipped


def test_render_report_has_header_then_parts() -> None:
    report = render_report(
        [("machine", "2 cores"), ("date", "today")],
        [PartResult.skipped("1", "Features", "x"), PartResult.skipped("5", "Scoring", "y")],
    )
    assert report.startswith("# mtlrec benchmark results\n\n- **machine**: 2 cores\n")
    assert report.index("## 1. Features") < report.index("## 5. Scoring")
    assert report.endswith("\n") and not report.endswith("\n\n")


# ------------------------------------------------------------------ profiles, CLI
def test_profile_overrides_are_validated() -> None:
    assert resolve_profile("quick", ["repeats=5"]).repeats == 5
    with pytest.raises(ValueError):
        resolve_profile("quick", ["repeats=2"])
    with pytest.raises(ValueError):
        resolve_profile("quick", ["no_such_field=1"])
    with pytest.raises(ValueError):
        resolve_profile("quick", ["feature_lines=[3,2,1]"])


def test_parse_parts() -> None:
    assert parse_parts("3, 1") == ["1", "3"]
    with pytest.raises(ValueError, match="unknown"):
        parse_parts("1,7")


# ------------------------------------------------------------------ part helpers
def _events_table() -> pa.Table:
    # user a: day 1 two impressions + a click, day 3 one impression; user b: day 2 impression
    rows = [
        ("a", "impression", "1970-01-02"),
        ("a", "impression", "1970-01-02"),
        ("a", "click", "1970-01-02"),
        ("a", "impression", "1970-01-04"),
        ("b", "impression", "1970-01-03"),
    ]
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "event_type": [r[1] for r in rows],
            "dt": [r[2] for r in rows],
        }
    )


def test_duckdb_user_aggregates_follow_the_point_in_time_rule() -> None:
    events = _events_table()  # noqa: F841  (read by DuckDB by name)
    as_of = pa.table({"as_of_day": pa.array([2, 4], pa.int32())})  # noqa: F841
    sql = duckdb_user_aggregates_sql(
        window_days=[1, 7], lookback_days=7, rate_window_days=7, ctr_prior=0.05,
        prior_strength=20.0,
    )
    out = duckdb.sql(sql).fetch_arrow_table()
    got = {(r["user_id"], r["as_of_day"]): r for r in out.to_pylist()}
    # as of day 2: only day-1 events count (strictly before); b's day-2 event does not
    assert set(got) == {("a", 2), ("a", 4), ("b", 4)}
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    assert got[("a", 2)]["user_log_impressions_1d"] == f32(math.log(3))
    assert got[("a", 2)]["user_log_clicks_1d"] == f32(math.log(2))
    # as of day 4: the day-3 impression is 1 day old, day-1 events 3 days old (outside 1d)
    assert got[("a", 4)]["user_log_impressions_1d"] == f32(math.log(2))
    assert got[("a", 4)]["user_log_impressions_7d"] == f32(math.log(4))
    assert got[("a", 4)]["user_log_clicks_1d"] == 0.0
    assert got[("a", 4)]["user_ctr_smoothed"] == f32((1 + 0.05 * 20) / (3 + 20))
    assert got[("b", 4)]["user_ctr_smoothed"] == f32((0 + 0.05 * 20) / (1 + 20))
    assert set(subset_columns([1, 7])) <= set(out.column_names)


def test_compare_tables_matches_rows_by_key_and_counts_ulps() -> None:
    left = pa.table(
        {"user_id": ["a", "b"], "as_of_day": [1, 1], "x": pa.array([1.0, 2.0], pa.float32())}
    )
    shuffled = left.take([1, 0])
    assert compare_tables(left, shuffled, ["x"]) == (True, 0)
    nudged = np.nextafter(np.float32(2.0), np.float32(3.0))
    other = left.set_column(2, "x", pa.array([1.0, nudged], pa.float32()))
    assert compare_tables(left, other, ["x"]) == (True, 1)
    assert compare_tables(left, left.slice(0, 1), ["x"]) == (False, -1)
    renamed = left.set_column(0, "user_id", pa.array(["a", "c"]))
    assert compare_tables(left, renamed, ["x"])[0] is False


def test_oracle_scores_chain_the_funnel() -> None:
    truth = pa.table(
        {
            "p_click": [0.5, 0.1],
            "p_add_to_cart_given_click": [0.2, 0.5],
            "p_purchase_given_click": [0.1, 0.4],
        }
    )
    scores = oracle_scores(truth)
    np.testing.assert_allclose(scores["click"], [0.5, 0.1])
    np.testing.assert_allclose(scores["add_to_cart"], [0.1, 0.05])
    np.testing.assert_allclose(scores["purchase"], [0.05, 0.04])


def test_last_epoch_metric(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"history": [{"train/samples_per_s": 1.0},
                                            {"train/samples_per_s": 2.5}]}))
    assert last_epoch_metric(path, "train/samples_per_s") == 2.5
    with pytest.raises(KeyError, match="no 'x'"):
        last_epoch_metric(path, "x")


def test_job_arguments_point_every_job_at_the_shared_dataset(tmp_path: Path) -> None:
    from benchmarks.context import BenchContext
    from benchmarks.dataset import DatasetPaths

    ctx = BenchContext(resolve_profile("quick", []), tmp_path, print, DatasetPaths(tmp_path))
    args = ctx.job_arguments(["train.epochs=1"])
    assert args[:2] == ["--config", "cluster_configs/local.yaml"]
    sets = args[3::2]
    assert all(flag == "--set" for flag in args[2::2])
    assert sets[:3] == [f"lake.root={tmp_path / 'lake'}", f"lake.raw_root={tmp_path / 'raw'}",
                        f"generator.truth_root={tmp_path / 'truth'}"]
    assert sets[-1] == "train.epochs=1"
    assert "spark.shuffle_partitions=2" in sets
    with pytest.raises(RuntimeError, match="shared dataset"):
        BenchContext(ctx.profile, tmp_path, print).job_arguments()


def test_part_one_largest_size_is_reused_only_when_complete_and_the_same_size(
    tmp_path: Path,
) -> None:
    import pyarrow as pa

    from benchmarks.bench_features import reusable_dataset, size_paths
    from benchmarks.context import BenchContext
    from mtlrec.lake import Lake
    from mtlrec.tables import GOLD_EXAMPLES as EXAMPLES_TABLE
    from mtlrec.tables import GOLD_FEATURE_SPEC as SPEC_TABLE

    quick = resolve_profile("quick", [])
    ctx = BenchContext(quick, tmp_path, print)
    largest = size_paths(ctx, quick.feature_lines[-1])
    lake = Lake(str(largest.lake))
    lake.write_arrow(pa.table({"x": [1]}), EXAMPLES_TABLE)
    assert reusable_dataset(ctx) is None, "no spec row yet: the gold build did not finish"
    lake.write_arrow(pa.table({"x": [1]}), SPEC_TABLE)
    assert reusable_dataset(ctx) == largest
    other = BenchContext(resolve_profile("quick", ["dataset_lines=1000"]), tmp_path, print)
    assert reusable_dataset(other) is None
