"""Unit tests of the gold stage's configuration, split planning and small helpers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pyspark.sql import SparkSession

from feature_engineering.examples import position_bucket
from feature_engineering.gold_config import GoldConfig, SplitConfig
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
