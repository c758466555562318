"""Categorical vocabularies, built on train days only, and their application.

A value gets its own index when it occurs in at least ``vocab_min_count``
train-day examples; indices run from 1 by descending count (ties by value),
so a rebuild on the same data gives the same indices. Everything else (values
seen only on val/test days, rare values, nulls) maps to 0, the OOV bucket.

The vocabulary is a table (``gold/vocabulary``: feature, value, index, count)
so that scoring maps raw values exactly as training did.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def build_vocabulary(train: DataFrame, sources: Mapping[str, str], min_count: int) -> DataFrame:
    """(feature, value, index, count) from the train rows.

    ``sources`` maps each categorical feature name to the raw (string) column
    it indexes.
    """
    # One pass over the train rows, each fanned out to one (feature, value) row per
    # feature: a union of one scan per feature ran 16 times the tasks for the same counts.
    pairs = F.array(
        *[
            F.struct(F.lit(feature).alias("feature"), F.col(raw).cast("string").alias("value"))
            for feature, raw in sources.items()
        ]
    )
    counts = (
        train.select(F.inline(pairs))
        .where(F.col("value").isNotNull())
        .groupBy("feature", "value")
        .agg(F.count(F.lit(1)).alias("count"))
        .where(F.col("count") >= min_count)
    )
    order = Window.partitionBy("feature").orderBy(F.desc("count"), F.asc("value"))
    return counts.select(
        "feature", "value", F.row_number().over(order).cast("long").alias("index"), "count"
    )


def vocabulary_sizes(vocabulary: DataFrame, features: list[str]) -> dict[str, int]:
    """Rows per feature including OOV row 0 (a small aggregate, one row per feature)."""
    rows = vocabulary.groupBy("feature").agg(F.max("index").alias("top")).collect()
    top = {row["feature"]: int(row["top"]) for row in rows}
    return {feature: top.get(feature, 0) + 1 for feature in features}


def apply_vocabulary(
    frame: DataFrame, vocabulary: DataFrame, sources: Mapping[str, str]
) -> DataFrame:
    """Add one int64 index column per feature (0 when the value is not in the vocabulary).

    Plain joins: Spark broadcasts the small vocabularies by itself and shuffles
    the big ones (user ids at production scale) instead of shipping them whole.
    """
    for feature, raw in sources.items():
        lookup = vocabulary.where(F.col("feature") == feature).select(
            F.col("value").alias(f"_{feature}_value"), F.col("index").alias(f"_{feature}_index")
        )
        frame = (
            frame.join(
                lookup,
                F.col(raw).cast("string") == F.col(f"_{feature}_value"),
                "left",
            )
            .withColumn(feature, F.coalesce(F.col(f"_{feature}_index"), F.lit(0)).cast("long"))
            .drop(f"_{feature}_value", f"_{feature}_index")
        )
    return frame
