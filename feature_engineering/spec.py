"""The FeatureSpec of a gold build (its row in ``gold/feature_spec`` is
``mtlrec.gold_snapshot.GoldSnapshot``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_engineering.examples import SLOT_FEATURES
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


# Each value becomes an integer of at most this many bits (plus sign) before it is summed,
# so a value's square fits a long and a sum of squares fits decimal(38, 0) for 2**66 rows.
_FIXED_POINT_BITS = 30


def dense_statistics(
    train: DataFrame, columns: Sequence[str], std_floor: float
) -> dict[str, tuple[float, float]]:
    """Column -> (mean, std) over the train rows, the same bits whatever the row order.

    A sum of doubles depends on the order Spark merges its partial sums (shuffle fetch
    order), so ``F.mean``/``F.stddev_pop`` differ in their last bits between two runs over
    the same rows, and an identical re-run would write a different spec. Instead, two
    aggregate rows: each column's count, min and max (exact in any order); then the sums of
    its values in fixed point, ``q = rint((x - centre) * 2**k)`` with ``|q| <= 2**30``, summed
    as decimals (exact, so in any order) and turned into mean and std with exact fractions on
    the driver. The fixed point keeps 2**-30 of the column's half-range: a mean or std
    off by that much does not change a standardised input.
    """
    values = [F.col(column).cast("double") for column in columns]
    bounds = train.agg(
        *(
            agg(value).alias(f"{name}{i}")
            for i, value in enumerate(values)
            for name, agg in (("n", F.count), ("lo", F.min), ("hi", F.max))
        )
    ).first()
    if bounds is None or not bounds["n0"]:
        raise ValueError("no train rows to compute dense statistics from")
    fixed_point: list[tuple[float, int]] = []  # per column: (centre, k)
    for i, column in enumerate(columns):
        low, high = bounds[f"lo{i}"], bounds[f"hi{i}"]
        if not bounds[f"n{i}"]:
            raise ValueError(f"dense feature {column!r} has no values on train days")
        if not math.isfinite(low) or not math.isfinite(high):
            raise ValueError(f"dense feature {column!r} has a non-finite mean/std on train days")
        centre = low / 2 + high / 2  # halves first: high + low may overflow
        half_range = max(high - centre, centre - low)
        # The largest k with half_range * 2**k < 2**30 (k <= 1000 keeps 2**k finite).
        k = min(_FIXED_POINT_BITS - math.frexp(half_range)[1], 1000) if half_range else 0
        fixed_point.append((centre, k))
    sums = train.agg(
        *(
            aggregate
            for i, (value, (centre, k)) in enumerate(zip(values, fixed_point, strict=True))
            for q in [F.rint((value - F.lit(centre)) * F.lit(math.ldexp(1.0, k))).cast("long")]
            for aggregate in (
                F.sum(q.cast("decimal(38,0)")).alias(f"s{i}"),
                F.sum((q * q).cast("decimal(38,0)")).alias(f"ss{i}"),
            )
        )
    ).first()
    assert sums is not None  # an aggregate without grouping always returns one row
    stats = {}
    for i, (column, (centre, k)) in enumerate(zip(columns, fixed_point, strict=True)):
        n = int(bounds[f"n{i}"])
        mean_q = Fraction(int(sums[f"s{i}"]), n)
        variance_q = Fraction(int(sums[f"ss{i}"]), n) - mean_q**2
        mean = float(Fraction(centre) + mean_q / Fraction(2) ** k)
        std = math.sqrt(variance_q) * math.ldexp(1.0, -k)  # inf, not an error, past 1e308
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
            CategoricalFeature(
                name=name,
                vocab_size=size,
                embedding_dim=embedding_dim,
                unknown_at_scoring=name in SLOT_FEATURES,
            )
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
