"""The item catalog and the user table for silver.

From the raw JSON Lines catalog (DESIGN.md 4.1) when the mapping names one,
else derived from the events: each item's most frequent ``item_category`` (logs
such as the behaviour CSV carry one on each event and ship no catalog), or
``UNKNOWN_CATEGORY`` for a log without categories (RetailRocket's events file).
Catalog and user files are listed and read like event files (``raw_input``):
literal names, no symlink out of the raw root.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from feature_engineering.config import RawMappingConfig
from feature_engineering.mapping import parse_time
from feature_engineering.raw_input import list_files, read_numbered_lines
from mtlrec.log import get_logger

ITEM_COLUMNS = (
    "item_id", "title", "category_l1", "category_l2", "category_l3", "brand", "price",
    "created_ts",
)  # fmt: skip
USER_COLUMNS = ("user_id", "signup_ts", "region", "tier")

_ITEM_SCHEMA = (
    "item_id string, title string, category_path string, brand string, price double, "
    "created_at string"
)
_USER_SCHEMA = "user_id string, signup_ts string, region string, tier string"
# Catalog lines are small records; a longer line is cut (and then fails to parse).
_MAX_DIMENSION_LINE_BYTES = 1 << 20
UNKNOWN_CATEGORY = "unknown"
"""category_l1 of an item whose log names no category (or none for that item)."""

_log = get_logger("catalog")


@dataclass(frozen=True)
class Dimension:
    """A dimension table and the raw rows that did not make it (no id, or a repeated id)."""

    table: DataFrame
    rejected: int
    duplicates: int


def _read_jsonl(spark: SparkSession, raw_root: str, directory: str, schema: str) -> DataFrame:
    files, skipped = list_files(raw_root, directory, "*.jsonl*")
    for entry in skipped:
        _log.warning("%s skipped (%s): %s", entry.path, entry.reason.value, entry.detail)
    lines = read_numbered_lines(spark, files, _MAX_DIMENSION_LINE_BYTES)
    return lines.select(F.from_json(F.col("value"), schema).alias("r")).select("r.*")


def _dedup(frame: DataFrame, key: str, order: list[Column]) -> Dimension:
    """One row per ``key`` (first by ``order``); rows without a key are rejected."""
    has_key = F.coalesce(F.trim(F.col(key)) != "", F.lit(False))
    ranked = frame.withColumn("_has_key", has_key).withColumn(
        "_rank", F.row_number().over(Window.partitionBy(key).orderBy(*order))
    )
    kept = F.col("_has_key") & (F.col("_rank") == 1)
    stats = ranked.agg(
        F.count(F.lit(1)).alias("total"),
        F.count(F.when(F.col("_has_key"), 1)).alias("keyed"),
        F.count(F.when(kept, 1)).alias("kept"),
    ).first()
    assert stats is not None
    table = ranked.where(kept).drop("_has_key", "_rank")
    return Dimension(
        table, rejected=stats["total"] - stats["keyed"], duplicates=stats["keyed"] - stats["kept"]
    )


def load_items(
    spark: SparkSession, raw_root: str, mapping: RawMappingConfig, bronze_events: DataFrame
) -> Dimension:
    """silver/items: one row per item_id, category_path split into three levels."""
    if mapping.items_dir is None:
        return _items_from_events(bronze_events)
    raw = _read_jsonl(spark, raw_root, mapping.items_dir, _ITEM_SCHEMA)
    levels = F.split(F.col("category_path"), ">")
    items = raw.select(
        F.trim("item_id").alias("item_id"),
        "title",
        *[F.trim(F.get(levels, i)).alias(f"category_l{i + 1}") for i in range(3)],
        "brand",
        "price",
        parse_time(F.col("created_at"), mapping.ts_epoch_unit).alias("created_ts"),
    )
    return _dedup(items, "item_id", [F.col("created_ts").desc_nulls_last(), F.col("title")])


def _items_from_events(events: DataFrame) -> Dimension:
    """Each item's most frequent event category (ties: the smallest) as category_l1;
    ``UNKNOWN_CATEGORY`` for an item whose events carry none."""
    counted = (
        events.where(F.col("item_category").isNotNull())
        .groupBy("item_id", "item_category")
        .agg(F.count(F.lit(1)).alias("n"))
    )
    best = Window.partitionBy("item_id").orderBy(F.col("n").desc(), F.col("item_category"))
    top = counted.withColumn("_rank", F.row_number().over(best)).where(F.col("_rank") == 1)
    known = top.select("item_id", F.col("item_category").alias("category_l1"))
    every = events.select("item_id").distinct().join(known, "item_id", "left")
    none = F.lit(None)
    table = every.select(
        "item_id",
        none.cast("string").alias("title"),
        F.coalesce("category_l1", F.lit(UNKNOWN_CATEGORY)).alias("category_l1"),
        none.cast("string").alias("category_l2"),
        none.cast("string").alias("category_l3"),
        none.cast("string").alias("brand"),
        none.cast("double").alias("price"),
        none.cast("timestamp").alias("created_ts"),
    )
    return Dimension(table, rejected=0, duplicates=0)


def load_users(spark: SparkSession, raw_root: str, mapping: RawMappingConfig) -> Dimension:
    """silver/users: one row per user_id (the latest signup wins a repeated id)."""
    if mapping.users_dir is None:
        empty = spark.createDataFrame(
            [], "user_id string, signup_ts timestamp, region string, tier string"
        )
        return Dimension(empty, rejected=0, duplicates=0)
    raw = _read_jsonl(spark, raw_root, mapping.users_dir, _USER_SCHEMA)
    users = raw.select(
        F.trim("user_id").alias("user_id"),
        parse_time(F.col("signup_ts"), mapping.ts_epoch_unit).alias("signup_ts"),
        "region",
        "tier",
    )
    return _dedup(users, "user_id", [F.col("signup_ts").desc_nulls_last(), F.col("region")])
