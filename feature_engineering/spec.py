"""The FeatureSpec of a gold build and its row in ``gold/feature_spec``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feature_engineering.splits import SplitPlan
from mtlrec.feature_spec import (
    SPEC_FORMAT_VERSION,
    CategoricalFeature,
    DenseFeature,
    EmbeddingFeature,
    FeatureSpec,
    TaskSpec,
)
from mtlrec.lake import Lake

TEXT_EMBEDDING_NAME = "item_text"
SPEC_TABLE = "gold/feature_spec"
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


@dataclass(frozen=True)
class SpecRecord:
    """One row of gold/feature_spec: the spec and the table versions it describes."""

    build_id: str
    spec: FeatureSpec
    created_at: datetime
    days_written: list[str]
    text_fingerprint: str | None
    source_versions: Mapping[str, int]
    gold_versions: Mapping[str, int | None]

    def to_arrow(self) -> pa.Table:
        row: dict[str, object] = {
            "build_id": self.build_id,
            "spec_format_version": SPEC_FORMAT_VERSION,
            "spec_json": self.spec.to_json(),
            "created_at": self.created_at,
            "days_written": self.days_written,
            "text_fingerprint": self.text_fingerprint,
        }
        for table, version in {**self.source_versions, **self.gold_versions}.items():
            row[_version_column(table)] = version
        fields = [
            pa.field("build_id", pa.string()),
            pa.field("spec_format_version", pa.int32()),
            pa.field("spec_json", pa.string()),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
            pa.field("days_written", pa.list_(pa.string())),
            pa.field("text_fingerprint", pa.string()),
        ] + [
            pa.field(_version_column(t), pa.int64())
            for t in [*self.source_versions, *self.gold_versions]
        ]
        return pa.Table.from_pylist([row], schema=pa.schema(fields))


def _version_column(table: str) -> str:
    """'silver/events' -> 'silver_events_version'."""
    return table.replace("/", "_") + "_version"


def latest_record(lake: Lake) -> dict[str, Any] | None:
    """The newest build's row of gold/feature_spec, or None before the first build."""
    if not lake.exists(SPEC_TABLE):
        return None
    # Read the snapshot's files directly: deltalake's own Arrow reader needs pyarrow >= 15.
    rows = []
    for uri in lake.snapshot_files(SPEC_TABLE):
        filesystem, path = pafs.FileSystem.from_uri(uri)
        rows += pq.read_table(path, filesystem=filesystem).to_pylist()
    return max(rows, key=lambda r: (r["created_at"], r["build_id"])) if rows else None


def read_latest_spec(lake: Lake) -> FeatureSpec:
    """The spec of the newest build in gold/feature_spec (for training and scoring)."""
    record = latest_record(lake)
    if record is None:
        raise ValueError(f"{SPEC_TABLE} holds no build under {lake.root}")
    return FeatureSpec.from_json(record["spec_json"])
