"""The FeatureSpec of a gold build (its row in ``gold/feature_spec`` is
``mtlrec.gold_snapshot.GoldSnapshot``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_engineering.splits import SplitPlan
from mtlrec.feature_spec import (
    CategoricalFeature,
    DenseFeature,
    EmbeddingFeature,
    FeatureSpec,
    TaskSpec,
)

TEXT_EMBEDDING_NAME = "item_text"
TASKS = [
    TaskSpec(name="click", type="binary", label_column="label_click"),
    TaskSpec(name="add_to_cart", type="binary", label_column="label_add_to_cart", parent="click"),
    TaskSpec(name="purchase", type="binary", label_column="label_purchase", parent="click"),
    TaskSpec(
        name="purchase_value",
        type="regression",
        label_column="label_purchase_value",
        parent="purchase",
    ),
]


def dense_statistics(
    train: DataFrame, columns: Sequence[str], std_floor: float
) -> dict[str, tuple[float, float]]:
    """Column -> (mean, std) over the train rows, one aggregate row to the driver."""
    aggs = []
    for i, column in enumerate(columns):
        value = F.col(column).cast("double")
        aggs += [F.mean(value).alias(f"m{i}"), F.stddev_pop(value).alias(f"s{i}")]
    row = train.agg(*aggs).first()
    if row is None or row["m0"] is None:
        raise ValueError("no train rows to compute dense statistics from")
    stats = {}
    for i, column in enumerate(columns):
        mean, std = float(row[f"m{i}"]), float(row[f"s{i}"] or 0.0)
        if not math.isfinite(mean) or not math.isfinite(std):
            raise ValueError(f"dense feature {column!r} has a non-finite mean/std on train days")
        stats[column] = (mean, max(std, std_floor))
    return stats


def build_spec(
    vocab_sizes: Mapping[str, int],
    embedding_dim: int,
    dense_stats: Mapping[str, tuple[float, float]],
    text_columns: Sequence[str],
    plan: SplitPlan,
) -> FeatureSpec:
    return FeatureSpec(
        categorical=[
            CategoricalFeature(name=name, vocab_size=size, embedding_dim=embedding_dim)
            for name, size in vocab_sizes.items()
        ],
        dense=[DenseFeature(name=n, mean=m, std=s) for n, (m, s) in dense_stats.items()],
        embeddings=(
            [EmbeddingFeature(name=TEXT_EMBEDDING_NAME, columns=list(text_columns))]
            if text_columns
            else []
        ),
        tasks=TASKS,
        train_days=plan.train,
        val_days=plan.val,
        test_days=plan.test,
    )
