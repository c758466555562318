"""Integration tests of the gold stage on a small silver log with real local Spark.

One gold build is shared by the module (it is the expensive part); tests that
rewrite it read the tables it wrote at pinned versions.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from gold_silver_log import DAYS, TEST_DAY, VAL_DAY, SilverLog, build_silver_log
from pyspark.sql import SparkSession

from feature_engineering.examples import CATEGORICAL_SOURCES
from feature_engineering.gold import build_examples_for, build_gold
from feature_engineering.gold_config import GoldConfig, TextEmbeddingConfig
from mtlrec.feature_spec import FeatureSpec
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.tables import (
    GOLD_EXAMPLES,
    GOLD_FEATURE_SPEC,
    GOLD_ITEM_FEATURES,
    GOLD_USER_FEATURES,
    GOLD_VOCABULARY,
    SILVER_EVENTS,
    SILVER_TABLES,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CFG = GoldConfig(text=TextEmbeddingConfig(encoder_partitions=1))
TRAIN_DAYS = DAYS[:-2]


@dataclass(frozen=True)
class Built:
    lake: Lake
    log: SilverLog
    spec: FeatureSpec
    examples_version: int


def _table(lake: Lake, name: str, version: int | None = None) -> pd.DataFrame:
    spark = SparkSession.getActiveSession()
    assert spark is not None
    return lake.read_table(spark, name, version).toPandas()


def _build(spark: SparkSession, root: Path, log: SilverLog) -> Built:
    lake = Lake(str(root), row_group_bytes=64 * 1024)
    log.write(spark, lake)
    build_gold(spark, lake, CFG)
    return Built(lake, log, GoldSnapshot.resolve(lake).spec, lake.version(GOLD_EXAMPLES))


@pytest.fixture(scope="module")
def built(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(spark, tmp_path_factory.mktemp("gold") / "lake", build_silver_log())


def _examples(built: Built) -> pd.DataFrame:
    return _table(built.lake, GOLD_EXAMPLES, built.examples_version)


# ---------------------------------------------------------------------- the contract
def test_feature_spec_matches_the_examples_table(built: Built) -> None:
    spec = built.spec
    schema = built.lake.delta_table(GOLD_EXAMPLES, built.examples_version).schema().to_arrow()
    types = {f.name: f.type for f in pa.schema(schema)}
    expected = [
        *spec.id_columns,
        "market",
        *spec.feature_columns(),
        *spec.label_columns(),
        "split",
        "dt",
    ]
    assert sorted(types) == sorted(expected)
    for feature in spec.categorical:
        assert types[feature.name] == pa.int64(), feature.name
    float_columns = [d.name for d in spec.dense] + spec.label_columns()
    float_columns += [c for e in spec.embeddings for c in e.columns]
    for column in float_columns:
        assert types[column] == pa.float32(), column
    assert [t.name for t in spec.tasks] == ["click", "add_to_cart", "purchase", "purchase_value"]
    assert spec.task("purchase_value").parent == "purchase"
    assert (spec.train_days, spec.val_days, spec.test_days) == (TRAIN_DAYS, [VAL_DAY], [TEST_DAY])
    assert spec.embeddings[0].columns == [f"text_emb_{i}" for i in range(CFG.text.dim)]
    # The slot an impression was shown in, which batch scoring cannot know (the weekday
    # it can: the scoring day's).
    unknown = {f.name for f in spec.categorical if f.unknown_at_scoring}
    assert unknown == {"cat_page", "cat_device", "cat_position_bucket", "cat_hour"}

    frame = _examples(built)
    assert frame[spec.feature_columns()].notna().all().all()
    for feature in spec.categorical:
        assert frame[feature.name].between(0, feature.vocab_size - 1).all(), feature.name
    vocab = _table(built.lake, GOLD_VOCABULARY)
    for feature in spec.categorical:
        assert feature.vocab_size == len(vocab[vocab["feature"] == feature.name]) + 1

    train = frame[frame["split"] == "train"]
    for dense in spec.dense:
        values = train[dense.name].astype("float64")
        assert dense.mean == pytest.approx(values.mean(), rel=1e-4, abs=1e-5), dense.name
        assert dense.std == pytest.approx(max(values.std(ddof=0), CFG.std_floor), rel=1e-3)

    record = _table(built.lake, GOLD_FEATURE_SPEC).iloc[-1]
    for table in SILVER_TABLES:
        assert record[table.replace("/", "_") + "_version"] == built.lake.version(table)
    assert record["gold_examples_version"] == built.examples_version


def test_text_embeddings_are_real_encoder_outputs(built: Built) -> None:
    frame = _examples(built)
    columns = built.spec.embeddings[0].columns
    per_item = frame.groupby("item_id")[columns].first()
    # Distinct titles give distinct vectors; one item always gets the same vector.
    assert len(per_item.drop_duplicates()) == len(per_item)
    assert (frame.groupby("item_id")[columns].nunique() == 1).all().all()
    assert np.abs(per_item.to_numpy()).sum(axis=1).min() > 0


# ---------------------------------------------------------------------- labels
def _python_labels(events: list[dict[str, Any]], window_hours: float) -> pd.DataFrame:
    """Plain-Python recomputation of DESIGN.md 4.3."""
    window = dt.timedelta(hours=window_hours)
    clicks: dict[tuple[str, str, str], dt.datetime] = {}
    for e in events:
        if e["event_type"] == "click" and e["request_id"] is not None:
            key = (e["user_id"], e["request_id"], e["item_id"])
            clicks[key] = min(clicks.get(key, e["event_ts"]), e["event_ts"])
    rows = []
    for imp in (e for e in events if e["event_type"] == "impression"):
        click_ts = clicks.get((imp["user_id"], imp["request_id"], imp["item_id"]))
        cart = purchase = 0.0
        value = 0.0
        if click_ts is not None:
            after = [
                e
                for e in events
                if e["user_id"] == imp["user_id"]
                and e["item_id"] == imp["item_id"]
                and click_ts <= e["event_ts"] <= click_ts + window
            ]
            cart = float(any(e["event_type"] == "add_to_cart" for e in after))
            purchases = sorted(
                (e for e in after if e["event_type"] == "purchase"),
                key=lambda e: (e["event_ts"], e["event_id"]),
            )
            if purchases:
                first = purchases[0]
                purchase = 1.0
                value = math.log1p(first["price"] * (first["quantity"] or 1))
        rows.append(
            {
                "impression_id": imp["event_id"],
                "label_click": float(click_ts is not None),
                "label_add_to_cart": cart,
                "label_purchase": purchase,
                "label_purchase_value": value,
            }
        )
    return pd.DataFrame(rows).set_index("impression_id").sort_index()


def test_labels_equal_a_plain_python_recomputation(built: Built) -> None:
    got = _examples(built).set_index("impression_id").sort_index()
    want = _python_labels(built.log.events, CFG.attribution_window_hours)
    assert list(got.index) == list(want.index)
    for column in ("label_click", "label_add_to_cart", "label_purchase"):
        assert (got[column].to_numpy() == want[column].to_numpy()).all(), column
    np.testing.assert_allclose(got["label_purchase_value"], want["label_purchase_value"], rtol=1e-6)
    # The log exercises every branch: clicks, carts, purchases, and purchases too late.
    assert want["label_purchase"].sum() > 0
    assert (want["label_click"] > want["label_purchase"]).sum() > 0


# ---------------------------------------------------------------------- vocabularies
def test_vocabularies_hold_only_frequent_train_day_values(built: Built) -> None:
    vocab = _table(built.lake, GOLD_VOCABULARY)
    train_imps = [
        e for e in built.log.events if e["event_type"] == "impression" and e["dt"] in TRAIN_DAYS
    ]
    for feature, column in (
        ("cat_user", "user_id"),
        ("cat_item", "item_id"),
        ("cat_brand", "brand"),
    ):
        counts = Counter(e[column] for e in train_imps)
        values = set(vocab.loc[vocab["feature"] == feature, "value"])
        assert values == {v for v, n in counts.items() if n >= CFG.vocab_min_count}, feature
    # Values first seen on val/test days exist in the log and are out of vocabulary.
    assert {"u_new", "i_new", "brand_new"}.isdisjoint(set(vocab["value"]))
    frame = _examples(built)
    late = frame[frame["item_id"] == "i_new"]
    assert len(late) > 0 and (late["cat_item"] == 0).all() and (late["cat_brand"] == 0).all()
    assert (frame.loc[frame["user_id"] == "u_new", "cat_user"] == 0).all()
    assert set(vocab["feature"]) <= set(CATEGORICAL_SOURCES)


# ---------------------------------------------------------------------- point in time
def _altered_from(log: SilverLog, day: str) -> SilverLog:
    """The same log with every non-impression event on or after ``day`` changed."""
    events = []
    for i, e in enumerate(log.events):
        if e["dt"] < day or e["event_type"] == "impression":
            events.append(e)
        elif i % 2 == 0:  # drop half of the later behaviour, reprice the rest
            events.append({**e, "price": (e["price"] or 1.0) * 3, "item_id": "i000"})
    for e in log.events:  # and click everything shown on or after the day
        if e["dt"] >= day and e["event_type"] == "impression":
            later = e["event_ts"] + dt.timedelta(seconds=1)
            events.append(
                {**e, "event_id": e["event_id"] + "x", "event_type": "click", "event_ts": later}
            )
    return SilverLog(events=events, items=log.items, users=log.users)


def test_features_of_a_day_ignore_events_on_and_after_it(
    built: Built, spark: SparkSession, tmp_path: Path
) -> None:
    altered = _build(spark, tmp_path / "altered", _altered_from(built.log, VAL_DAY))
    features = built.spec.feature_columns()

    def day_rows(b: Built, day: str) -> pd.DataFrame:
        frame = _examples(b)
        return frame[frame["dt"] == day].set_index("impression_id").sort_index()

    before, after = day_rows(built, VAL_DAY), day_rows(altered, VAL_DAY)
    pd.testing.assert_frame_equal(before[features], after[features])
    for table, key in ((GOLD_USER_FEATURES, "user_id"), (GOLD_ITEM_FEATURES, "item_id")):
        old = _table(built.lake, table)
        new = _table(altered.lake, table)
        old = old[old["dt"] <= VAL_DAY].sort_values([key, "dt"]).reset_index(drop=True)
        new = new[new["dt"] <= VAL_DAY].sort_values([key, "dt"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(old, new[old.columns], check_categorical=False)
    # The alteration is real: it changes that day's labels and the next day's features.
    assert not before["label_click"].equals(after["label_click"])
    next_before, next_after = day_rows(built, TEST_DAY), day_rows(altered, TEST_DAY)
    assert not next_before["user_log_clicks_1d"].equals(next_after["user_log_clicks_1d"])


def test_scoring_path_rebuilds_the_same_features(built: Built, spark: SparkSession) -> None:
    pairs = (
        built.lake.read_table(spark, SILVER_EVENTS, filters=[("dt", "=", VAL_DAY)])
        .where("event_type = 'impression'")
        .withColumnRenamed("event_id", "impression_id")
    )
    rebuilt = build_examples_for(spark, built.lake, CFG, pairs, VAL_DAY).toPandas()
    stored = _examples(built)
    stored = stored[stored["dt"] == VAL_DAY]
    features = built.spec.feature_columns()
    pd.testing.assert_frame_equal(
        rebuilt.set_index("impression_id").sort_index()[features],
        stored.set_index("impression_id").sort_index()[features],
    )


# ---------------------------------------------------------------------- re-runs
def test_rerunning_a_day_replaces_its_partition(built: Built, spark: SparkSession) -> None:
    lake = built.lake
    before = _examples(built).groupby(["split", "dt"]).size()
    build_gold(spark, lake, CFG.model_copy(update={"days": [VAL_DAY]}))
    after_frame = _table(lake, GOLD_EXAMPLES)
    assert lake.version(GOLD_EXAMPLES) > built.examples_version
    assert after_frame["impression_id"].is_unique
    pd.testing.assert_series_equal(after_frame.groupby(["split", "dt"]).size(), before)
    records = _table(lake, GOLD_FEATURE_SPEC)
    assert list(records["days_written"].iloc[-1]) == [VAL_DAY]
    # The rebuild reused the catalog's text embeddings (same inputs, same fingerprint).
    assert records["text_fingerprint"].nunique() == 1
    assert records["gold_item_text_embeddings_version"].nunique() == 1
