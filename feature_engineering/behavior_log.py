"""Synthetic impressions for logs that record no impressions (e.g. the behaviour CSV).

Each click becomes one slate: a positive impression of the clicked item plus
up to ``negatives_per_click`` negative impressions of catalog items the user
did not click in that session, all sharing a synthetic request_id
``r-<click event_id>``; positions 1..n are assigned by a seeded hash, so the
clicked item's slot varies. The click itself gets the slate's request_id and
its position, which makes the shape identical to a log with real impressions.

Sampling is deterministic (hashes of seed, click and draw number; no random
state) and fully distributed: ``draws_per_negative`` candidates are drawn per
wanted negative by hashing into the catalog's row index, clicked and repeated
items are dropped, and the first ``negatives_per_click`` survivors are kept.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from feature_engineering.config import NegativeSamplingConfig

CATALOG_COLUMNS = (
    "category_l1", "category_l2", "category_l3", "brand", "item_price", "item_created_ts",
)  # fmt: skip


def _catalog_index(items: DataFrame) -> DataFrame:
    """Items numbered 0..M-1 in item_id order, with the silver catalog column names."""
    order = Window.orderBy("item_id")
    return items.select(
        (F.row_number().over(order) - 1).alias("_idx"),
        F.col("item_id").alias("_cand_item"),
        *[F.col(c) for c in ("category_l1", "category_l2", "category_l3", "brand")],
        F.col("price").alias("item_price"),
        F.col("created_ts").alias("item_created_ts"),
    )


def synthesize_impressions(
    events: DataFrame, items: DataFrame, catalog_size: int, cfg: NegativeSamplingConfig
) -> DataFrame:
    """``events`` (silver columns) with clicks given slates and impression rows added."""
    clicks = events.where(F.col("event_type") == "click")
    seed = F.lit(cfg.seed)
    wanted = cfg.negatives_per_click
    slate_rows = clicks.select(
        F.col("event_id").alias("_click_id"),
        F.col("item_id").alias("_slate_item"),
        F.lit(True).alias("_positive"),
        *[F.col(c) for c in ("item_known", *CATALOG_COLUMNS)],
    )
    if catalog_size > 0:
        draws = clicks.select(
            F.col("event_id").alias("_click_id"),
            "user_id",
            "session_id",
            F.explode(F.sequence(F.lit(1), F.lit(wanted * cfg.draws_per_negative))).alias("_k"),
        ).withColumn("_idx", F.pmod(F.xxhash64(seed, "_click_id", "_k"), F.lit(catalog_size)))
        clicked = clicks.select(
            "user_id", "session_id", F.col("item_id").alias("_cand_item")
        ).distinct()
        candidates = (
            draws.join(_catalog_index(items), "_idx")
            .join(clicked, ["user_id", "session_id", "_cand_item"], "left_anti")
            .withColumn(
                "_first",
                F.row_number().over(Window.partitionBy("_click_id", "_cand_item").orderBy("_k")),
            )
            .where(F.col("_first") == 1)
            .withColumn("_nth", F.row_number().over(Window.partitionBy("_click_id").orderBy("_k")))
            .where(F.col("_nth") <= wanted)
        )
        slate_rows = slate_rows.unionByName(
            candidates.select(
                "_click_id",
                F.col("_cand_item").alias("_slate_item"),
                F.lit(False).alias("_positive"),
                F.lit(True).alias("item_known"),
                *CATALOG_COLUMNS,
            )
        )
    slot = Window.partitionBy("_click_id").orderBy(
        F.xxhash64(seed, "_click_id", "_slate_item"), "_slate_item"
    )
    slates = slate_rows.withColumn("_position", F.row_number().over(slot).cast("int"))

    click_cols = [c for c in events.columns if c not in ("item_known", *CATALOG_COLUMNS)]
    impressions = slates.join(
        clicks.select(*[F.col(c).alias(f"_c_{c}") for c in click_cols]),
        F.col("_click_id") == F.col("_c_event_id"),
    )
    request = F.concat(F.lit("r-"), F.col("_click_id"))
    generated = {
        "event_id": F.concat(F.col("_click_id"), F.lit("-imp"), F.col("_position").cast("string")),
        "event_type": F.lit("impression"),
        "item_id": F.col("_slate_item"),
        "request_id": request,
        "position": F.col("_position"),
        "price": F.lit(None).cast("double"),
        "quantity": F.lit(None).cast("int"),
    }
    impression_rows = impressions.select(
        *[
            generated[c].alias(c)
            if c in generated
            else (F.col(c) if c in ("item_known", *CATALOG_COLUMNS) else F.col(f"_c_{c}")).alias(c)
            for c in events.columns
        ]
    )
    positive_slot = slates.where("_positive").select("_click_id", "_position")
    keyed_clicks = (
        clicks.join(positive_slot, F.col("event_id") == F.col("_click_id"))
        .withColumn("request_id", request)
        .withColumn("position", F.col("_position"))
        .select(*events.columns)
    )
    others = events.where(F.col("event_type") != "click")
    return others.unionByName(keyed_clicks).unionByName(impression_rows)
