"""Unit tests of the gold stage's configuration, split planning and small helpers."""

from __future__ import annotations

import datetime as dt
import math
import random
from typing import Any

import pytest
from gold_silver_log import EVENT_SCHEMA
from pydantic import ValidationError
from pyspark.sql import SparkSession

from feature_engineering.examples import position_bucket
from feature_engineering.gold_config import GoldConfig, SplitConfig
from feature_engineering.point_in_time import (
    day_number,
    item_features,
    user_affinities,
    user_features,
)
from feature_engineering.spec import dense_statistics
from feature_engineering.splits import SplitError, plan_splits

DAYS = [f"2026-10-{d:02d}" for d in range(1, 11)]


def test_default_split_is_last_day_test_and_day_before_val() -> None:
    plan = plan_splits(list(reversed(DAYS)), SplitConfig())
    assert plan.train == DAYS[:-2]
    assert plan.val == [DAYS[-2]]
    assert plan.test == [DAYS[-1]]
    assert plan.split_of()[DAYS[0]] == "train"


def test_split_counts_are_configurable() -> None:
    plan = plan_splits(DAYS, SplitConfig(test_day_count=2, val_day_count=3))
    assert (len(plan.train), len(plan.val), len(plan.test)) == (5, 3, 2)
    assert plan.val == DAYS[5:8] and plan.test == DAYS[8:]


def test_explicit_day_lists_win_and_skip_absent_days() -> None:
    cfg = SplitConfig(train_days=DAYS[:3], val_days=[DAYS[5]], test_days=[DAYS[7], DAYS[9]])
    plan = plan_splits(DAYS[:8], cfg)
    assert plan.train == DAYS[:3] and plan.val == [DAYS[5]] and plan.test == [DAYS[7]]


def test_too_few_days_for_the_held_out_splits_is_an_error() -> None:
    with pytest.raises(SplitError, match="test_day_count"):
        plan_splits(DAYS[:2], SplitConfig())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_days": DAYS[:2]}, "all of train_days"),
        ({"train_days": DAYS[:2], "val_days": [DAYS[1]], "test_days": [DAYS[3]]}, "both"),
        ({"train_days": DAYS[2:4], "val_days": [DAYS[0]], "test_days": [DAYS[5]]}, "before"),
        ({"train_days": ["2026-13-01"], "val_days": [DAYS[1]], "test_days": [DAYS[2]]}, "YYYY"),
    ],
)
def test_bad_split_lists_are_rejected(kwargs: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SplitConfig(**kwargs)


def test_gold_config_validates_windows_and_buckets() -> None:
    assert GoldConfig().lookback_days == 28
    assert (
        GoldConfig(window_days=[1, 3], rate_window_days=5, affinity_window_days=2).lookback_days
        == 5
    )
    with pytest.raises(ValidationError, match="ascending"):
        GoldConfig(window_days=[7, 1])
    with pytest.raises(ValidationError, match="ascending"):
        GoldConfig(position_buckets=[1, 1, 2])
    with pytest.raises(ValidationError, match="extra"):
        GoldConfig.model_validate({"windows": [1]})


@pytest.mark.spark
def test_position_buckets(spark: SparkSession) -> None:
    frame = spark.createDataFrame([(p,) for p in (None, 1, 2, 6, 7, 8, 51, 400)], "position int")
    rows = frame.select(position_bucket(frame["position"], [1, 2, 6, 8, 51]).alias("b")).collect()
    assert [r["b"] for r in rows] == [None, "1", "2-5", "6-7", "6-7", "8-50", "51+", "51+"]


@pytest.mark.spark
def test_a_late_line_counts_only_after_the_day_it_arrived(spark: SparkSession) -> None:
    """A click of day 1 delivered in the day-3 ingest folder is unknown as of days 2 and
    3 and counted (in event time: 3 days old) as of day 4; an on-time click of day 1 is
    counted from day 2. A line that arrives after the longest window never counts."""
    cfg = GoldConfig()
    day = [(dt.date(2026, 10, 1) + dt.timedelta(days=k)).isoformat() for k in range(31)]
    one, two, three, four = day[0], day[1], day[2], day[3]
    after_lookback = day[cfg.lookback_days]  # day 1 + lookback: too late for any window

    def click(event_id: str, user: str, item: str, ingest_dt: str) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(EVENT_SCHEMA.fieldNames())
        row.update(
            event_id=event_id,
            event_ts=dt.datetime(2026, 10, 1, 10, tzinfo=dt.UTC),
            dt=one,
            ingest_dt=ingest_dt,
            user_id=user,
            event_type="click",
            item_id=item,
            category_l1="A",
        )
        return row

    events = spark.createDataFrame(
        [
            click("late", "u_late", "i_late", three),
            click("on_time", "u_on_time", "i_on_time", one),
            click("too_late", "u_too_late", "i_too_late", after_lookback),
        ],
        EVENT_SCHEMA,
    )
    as_of = [day_number(d) for d in (two, three, four, day[cfg.lookback_days + 1])]

    def by_key(rows: Any, key: str, column: str) -> dict[tuple[str, str], Any]:
        return {(r[key], as_of.index(r["as_of_day"])): r[column] for r in rows.collect()}

    log1p = math.log1p(1)
    users = by_key(user_features(events, as_of, cfg), "user_id", "user_log_clicks_7d")
    assert users == pytest.approx(
        {
            ("u_on_time", 0): log1p,
            ("u_on_time", 1): log1p,
            ("u_on_time", 2): log1p,
            ("u_late", 2): log1p,
        }
    )
    late_1d = by_key(user_features(events, as_of, cfg), "user_id", "user_log_clicks_1d")
    assert late_1d[("u_late", 2)] == 0.0  # three days old in event time
    items = by_key(item_features(events, as_of, cfg), "item_id", "item_log_clicks_7d")
    assert items == pytest.approx(
        {("i_on_time", 0): log1p, ("i_on_time", 1): log1p, ("i_on_time", 2): log1p,
         ("i_late", 2): log1p}
    )  # fmt: skip
    tops = by_key(user_affinities(events, as_of, cfg), "user_id", "affinity_total_category_l1")
    assert {k for k, v in tops.items() if v} == {
        ("u_on_time", 0), ("u_on_time", 1), ("u_on_time", 2), ("u_late", 2),
    }  # fmt: skip


def test_dense_statistics_are_the_same_bits_in_any_row_order(spark: SparkSession) -> None:
    # Magnitudes from 1e-3 to 1e6: a float sum of these depends on the order it adds them,
    # which is what Spark's partial sums do between two runs over the same rows.
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 3) * rng.choice([-1, 1]) for _ in range(4000)]
    reordered = list(reversed(values))
    assert sum(values) != sum(reordered), "the data must be order-sensitive for this test"
    columns = ["x", "constant"]

    def statistics(rows: list[float], partitions: int) -> dict[str, tuple[float, float]]:
        frame = spark.createDataFrame(
            spark.sparkContext.parallelize([(v, 2.5) for v in rows], partitions), columns
        )
        return dense_statistics(frame, columns, std_floor=1e-6)

    one, three = statistics(values, 1), statistics(reordered, 3)
    assert one == three
    mean, std = one["x"]
    assert mean == pytest.approx(math.fsum(values) / len(values), rel=1e-7)
    assert std == pytest.approx(statistics_std(values), rel=1e-7)
    assert one["constant"] == (2.5, 1e-6)


def statistics_std(values: list[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


@pytest.mark.spark
def test_the_mean_click_price_of_huge_prices_is_finite(spark: SparkSession) -> None:
    """Two clicks at 1.5e308 overflow a plain sum of doubles; the feature is log1p of their
    mean, as for any price."""
    cfg = GoldConfig()

    def click(event_id: str, price: float) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(EVENT_SCHEMA.fieldNames())
        row.update(
            event_id=event_id,
            event_ts=dt.datetime(2026, 10, 1, 10, tzinfo=dt.UTC),
            dt="2026-10-01",
            ingest_dt="2026-10-01",
            user_id="u",
            event_type="click",
            item_id=event_id,
            item_price=price,
        )
        return row

    events = spark.createDataFrame(
        [click("a", 1.5e308), click("b", 1.5e308), click("c", 3.0)], EVENT_SCHEMA
    )
    row = user_features(events, [day_number("2026-10-02")], cfg).first()
    assert row is not None
    mean = 1.5e308 / 3 * 2 + 1.0
    assert row["user_log_mean_click_price"] == pytest.approx(math.log1p(mean), rel=1e-6)
