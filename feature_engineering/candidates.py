"""Candidate generation for batch scoring: which items each user's model scores.

The rule (``score.candidates``, documented on ``CandidateConfig``) merges three
sources in priority order — the user's recently viewed items, the popular items of
the user's top categories, the whole catalogue by popularity — and keeps the first
``per_user`` distinct items. The last source covers the catalogue, so every user
gets exactly ``per_user`` candidates whenever the catalogue holds that many items
(``popular_items`` checks it). Everything is computed from silver events of the
``history_days`` before the scoring day: nothing on or after it is read.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from mtl_model.scoring_config import CandidateConfig
from mtlrec.errors import InputError

# Source priorities: a lower number wins when an item comes from several sources.
RECENT, CATEGORY, POPULAR = 1, 2, 3


class CandidateError(InputError, ValueError):
    """The catalogue cannot provide the configured number of candidates."""


def _by_popularity() -> list[Column]:
    return [F.col("popularity").desc(), F.col("item_id")]


def _weight(weights: dict[str, float]) -> Column:
    column = F.lit(0.0)
    for event_type, weight in weights.items():
        column = F.when(F.col("event_type") == event_type, F.lit(weight)).otherwise(column)
    return column


def eligible_items(
    items: DataFrame, events: DataFrame, day: str, cfg: CandidateConfig
) -> DataFrame:
    """Catalogue items created before ``day`` with their popularity and category rank.

    ``events`` are silver events of the history window. Columns: item_id, category_l1,
    popularity, category_rank.
    """
    start_of_day = F.lit(f"{day} 00:00:00").cast("timestamp")
    catalogue = items.where(
        F.col("created_ts").isNull() | (F.col("created_ts") < start_of_day)
    ).select("item_id", "category_l1")
    popularity = (
        events.where(F.col("event_type").isin(list(cfg.popularity_weights)))
        .groupBy("item_id")
        .agg(F.sum(_weight(cfg.popularity_weights)).alias("popularity"))
    )
    ranked = catalogue.join(popularity, "item_id", "left").fillna({"popularity": 0.0})
    return ranked.withColumn(
        "category_rank",
        F.row_number().over(Window.partitionBy("category_l1").orderBy(*_by_popularity())),
    )


def popular_items(ranked_items: DataFrame, cfg: CandidateConfig) -> DataFrame:
    """(item_id, global_rank) of the ``per_user`` most popular eligible items.

    A top-N (``limit`` after ``orderBy``: partial sorts, never the catalogue in one
    partition) whose few rows are numbered on the driver. Raises ``CandidateError`` when
    fewer than ``per_user`` items are eligible.
    """
    top = ranked_items.orderBy(*_by_popularity()).limit(cfg.per_user).select("item_id").collect()
    if len(top) < cfg.per_user:
        raise CandidateError(
            f"only {len(top)} catalogue items are eligible, fewer than "
            f"score.candidates.per_user={cfg.per_user}: lower it (and score.top_k)"
        )
    spark = ranked_items.sparkSession
    return spark.createDataFrame(
        [(row["item_id"], rank) for rank, row in enumerate(top, start=1)],
        "item_id string, global_rank int",
    )


def candidates(
    users: DataFrame,
    events: DataFrame,
    ranked_items: DataFrame,
    popular: DataFrame,
    cfg: CandidateConfig,
) -> DataFrame:
    """(user_id, item_id, source, candidate_rank): exactly ``per_user`` rows per user.

    ``users`` has one ``user_id`` per row; ``events`` are silver events of the history
    window; ``ranked_items`` and ``popular`` come from ``eligible_items`` and
    ``popular_items``.
    """
    # The catalogue's category, not the event's copy of it: one source of truth.
    user_events = (
        events.select("user_id", "item_id", "event_type", "event_ts")
        .join(users, "user_id", "left_semi")
        .join(ranked_items.select("item_id", "category_l1"), "item_id")
    )
    by_user = Window.partitionBy("user_id")

    recent = (
        user_events.where(F.col("event_type").isin(cfg.recent_event_types))
        .groupBy("user_id", "item_id")
        .agg(F.max("event_ts").alias("last_seen"))
        .withColumn(
            "order", F.row_number().over(by_user.orderBy(F.col("last_seen").desc(), "item_id"))
        )
        .where(F.col("order") <= cfg.recent_items)
        .select("user_id", "item_id", F.lit(RECENT).alias("source"), "order")
    )

    top_categories = (
        user_events.where(
            F.col("event_type").isin(list(cfg.popularity_weights))
            & F.col("category_l1").isNotNull()
        )
        .groupBy("user_id", "category_l1")
        .agg(F.sum(_weight(cfg.popularity_weights)).alias("affinity"))
        .withColumn(
            "category_order",
            F.row_number().over(by_user.orderBy(F.col("affinity").desc(), "category_l1")),
        )
        .where(F.col("category_order") <= cfg.top_categories)
    )
    category = (
        top_categories.join(
            ranked_items.where(F.col("category_rank") <= cfg.items_per_category),
            "category_l1",
        )
        # Category by category, each in popularity order.
        .select(
            "user_id",
            "item_id",
            F.lit(CATEGORY).alias("source"),
            (F.col("category_order") * F.lit(1_000_000) + F.col("category_rank")).alias("order"),
        )
    )

    everyone = users.crossJoin(F.broadcast(popular)).select(
        "user_id", "item_id", F.lit(POPULAR).alias("source"), F.col("global_rank").alias("order")
    )

    merged = (
        recent.unionByName(category)
        .unionByName(everyone)
        .withColumn(
            "first",
            F.row_number().over(
                Window.partitionBy("user_id", "item_id").orderBy("source", "order")
            ),
        )
        .where(F.col("first") == 1)
    )
    return (
        merged.withColumn(
            "candidate_rank",
            F.row_number().over(by_user.orderBy("source", "order", "item_id")),
        )
        .where(F.col("candidate_rank") <= cfg.per_user)
        .select("user_id", "item_id", "source", "candidate_rank")
    )
