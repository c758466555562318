"""Assemble model examples from (user, item, context, dt) rows.

One code path for training and scoring: ``feature_frame`` takes any frame of
targets (impressions for training, candidate pairs for scoring) and joins the
point-in-time features (``point_in_time_features``) as of each row's ``dt``,
the catalog attributes, the user attributes, the user x item-attribute
affinities, the context and the item text embedding; ``encode`` maps the
categoricals through the vocabulary and fixes the column types the model
contract asks for (int64 / float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from feature_engineering.gold_config import GoldConfig
from feature_engineering.point_in_time import (
    AFFINITY_DIMENSIONS,
    affinity_share,
    day_number,
    day_start_seconds,
    item_defaults,
    item_feature_names,
    item_features,
    user_affinities,
    user_defaults,
    user_feature_names,
    user_features,
)
from feature_engineering.vocab import apply_vocabulary

ID_COLUMNS = ["impression_id", "request_id", "user_id", "item_id"]
TARGET_COLUMNS = [
    *ID_COLUMNS,
    "dt",
    "event_ts",
    "position",
    "page",
    "device",
    "market",
]
# Categorical feature column -> the raw string column of ``feature_frame`` it indexes.
CATEGORICAL_SOURCES: dict[str, str] = {
    "cat_user": "user_id",
    "cat_item": "item_id",
    "cat_category_l1": "category_l1",
    "cat_category_l2": "category_l2",
    "cat_category_l3": "category_l3",
    "cat_brand": "brand",
    "cat_page": "page",
    "cat_device": "device",
    "cat_market": "market",
    "cat_position_bucket": "position_bucket",
    "cat_hour": "hour",
    "cat_weekday": "weekday",
    "cat_user_region": "region",
    "cat_user_tier": "tier",
    "cat_user_top_category_l1": "user_top_category_l1",
    "cat_user_top_brand": "user_top_brand",
}
# The slot an impression was shown in: known for every logged row, unknown to batch
# scoring (the spec marks them unknown_at_scoring; the weekday is the scoring day's).
SLOT_FEATURES = ("cat_page", "cat_device", "cat_position_bucket", "cat_hour")
ITEM_CATEGORY_COLUMNS = ["category_l1", "category_l2", "category_l3", "brand"]
TOP_DIMENSIONS = ("category_l1", "brand")
ITEM_STATIC_FEATURES = ["item_log_price", "item_age_days"]
AFFINITY_FEATURES = [f"user_affinity_{d}" for d in AFFINITY_DIMENSIONS]


@dataclass(frozen=True)
class FeatureSources:
    """The tables features are computed from.

    ``events`` is silver/events; only rows available before each target's day
    (event day and ingest day both before it, see ``point_in_time``) are used.
    ``text`` is (item_id, text_emb_*) or None when text is disabled.
    """

    events: DataFrame
    items: DataFrame
    users: DataFrame
    text: DataFrame | None


def dense_feature_names(cfg: GoldConfig) -> list[str]:
    return [
        *user_feature_names(cfg),
        *item_feature_names(cfg),
        *ITEM_STATIC_FEATURES,
        *AFFINITY_FEATURES,
    ]


def position_bucket(position: Column, bounds: list[int]) -> Column:
    """'1', '2', ..., '13-16', '51+' from the ascending lower bounds; null stays null."""
    label = F.lit(None).cast("string")
    for low, high in zip(bounds, [*bounds[1:], None], strict=True):
        if high is None:
            name = f"{low}+"
        elif high == low + 1:
            name = str(low)
        else:
            name = f"{low}-{high - 1}"
        label = F.when(position >= low, F.lit(name)).otherwise(label)
    return label


def _context(targets: DataFrame, cfg: GoldConfig) -> DataFrame:
    return targets.select(
        *TARGET_COLUMNS,
        day_number(F.col("dt")).alias("as_of_day"),
        position_bucket(F.col("position"), cfg.position_buckets).alias("position_bucket"),
        F.hour("event_ts").cast("string").alias("hour"),
        F.dayofweek("event_ts").cast("string").alias("weekday"),
    )


def _item_attributes(items: DataFrame) -> DataFrame:
    return items.select(
        "item_id",
        *ITEM_CATEGORY_COLUMNS,
        F.col("price").alias("catalog_price"),
        F.col("created_ts").alias("item_created_ts"),
    )


@dataclass(frozen=True)
class PointInTimeFeatures:
    """The point-in-time aggregates as of some days, keyed by (entity, ``as_of_day``).

    Computed once per build (``point_in_time_features``): gold joins them into the
    examples and writes the same rows to gold/user_features and gold/item_features.
    """

    users: DataFrame  # user_id, as_of_day, user_feature_names(cfg)
    items: DataFrame  # item_id, as_of_day, item_feature_names(cfg)
    affinities: DataFrame  # user_id, as_of_day, user_top_*, affinity_* (see user_affinities)


def point_in_time_features(
    events: DataFrame, days: list[str], cfg: GoldConfig
) -> PointInTimeFeatures:
    """The user, item and affinity aggregates of ``events`` (silver) as of each of ``days``."""
    as_of_days = sorted({day_number(d) for d in days})
    return PointInTimeFeatures(
        user_features(events, as_of_days, cfg),
        item_features(events, as_of_days, cfg),
        user_affinities(events, as_of_days, cfg),
    )


def feature_frame(
    targets: DataFrame, sources: FeatureSources, features: PointInTimeFeatures, cfg: GoldConfig
) -> DataFrame:
    """Targets plus raw categorical strings and float32 dense and text features.

    ``targets`` carries ``TARGET_COLUMNS`` (nullable context allowed); ``features``
    must be computed as of every ``dt`` among them.
    """
    frame = _context(targets, cfg)
    keys_user = ["user_id", "as_of_day"]
    frame = frame.join(features.users, keys_user, "left")
    frame = user_defaults(cfg).fill(frame)
    frame = frame.join(features.items, ["item_id", "as_of_day"], "left")
    frame = item_defaults(cfg).fill(frame)
    frame = frame.join(_item_attributes(sources.items), "item_id", "left")
    frame = frame.join(sources.users.select("user_id", "region", "tier"), "user_id", "left")
    frame = frame.join(features.affinities, keys_user, "left").select(
        *frame.columns,
        *[F.col(f"user_top_{d}") for d in TOP_DIMENSIONS],
        *[affinity_share(d, F.col(d)).alias(f"user_affinity_{d}") for d in AFFINITY_DIMENSIONS],
    )
    as_of_s = day_start_seconds(F.col("as_of_day"))
    frame = frame.withColumn(
        "item_log_price",
        F.coalesce(F.log1p(F.greatest(F.col("catalog_price"), F.lit(0.0))), F.lit(0.0)).cast(
            "float"
        ),
    ).withColumn(
        "item_age_days",
        F.coalesce(
            F.greatest(
                (as_of_s - F.col("item_created_ts").cast("double")) / F.lit(86400.0), F.lit(0.0)
            ),
            F.lit(0.0),
        ).cast("float"),
    )
    if sources.text is not None:
        text_columns = [c for c in sources.text.columns if c != "item_id"]
        frame = frame.join(sources.text, "item_id", "left").fillna(dict.fromkeys(text_columns, 0.0))
    return frame


def encode(
    frame: DataFrame,
    vocabulary: DataFrame,
    cfg: GoldConfig,
    text_columns: Sequence[str],
    passthrough: Sequence[str] = (),
) -> DataFrame:
    """The contract's columns: ids, market, int64 categoricals, float32 dense and text, dt.

    ``passthrough`` columns (labels, split) are kept as they are, before ``dt``.
    """
    indexed = apply_vocabulary(frame, vocabulary, CATEGORICAL_SOURCES)
    return indexed.select(
        *ID_COLUMNS,
        "market",
        *[F.col(c).cast("long").alias(c) for c in CATEGORICAL_SOURCES],
        *[F.col(c).cast("float").alias(c) for c in dense_feature_names(cfg)],
        *[F.col(c).cast("float").alias(c) for c in text_columns],
        *passthrough,
        "dt",
    )
