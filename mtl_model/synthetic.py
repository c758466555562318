"""A small synthetic funnel problem with known probabilities (tests, examples, benchmarks).

Rows are impressions with two categorical features (``user`` and ``item``
indices), two raw dense features, a 4-dimensional "text" embedding and a
``user_id`` group column. The true click, add-to-cart-given-click and
purchase-given-click probabilities are known functions of the features, so the
oracle — the true unconditional probability of each label — gives the best
achievable AUC. ``effects_seed`` fixes the world (feature effects) and
``sample_seed`` the rows drawn from it, so two "markets" can share a world; each
effect table is drawn from its own generator, so a larger vocabulary extends a
smaller one (same effects for shared indices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtl_model.features import Batch
from mtlrec.feature_spec import (
    CategoricalFeature,
    DenseFeature,
    EmbeddingFeature,
    FeatureSpec,
    TaskSpec,
)

TEXT_DIM = 4
DENSE_MEAN, DENSE_STD = 5.0, 2.0


def funnel_spec(user_vocab: int, item_vocab: int, embedding_dim: int = 8) -> FeatureSpec:
    return FeatureSpec(
        categorical=[
            CategoricalFeature(name="user", vocab_size=user_vocab, embedding_dim=embedding_dim),
            CategoricalFeature(name="item", vocab_size=item_vocab, embedding_dim=embedding_dim),
        ],
        dense=[
            DenseFeature(name="price", mean=DENSE_MEAN, std=DENSE_STD),
            DenseFeature(name="recency", mean=DENSE_MEAN, std=DENSE_STD),
        ],
        embeddings=[EmbeddingFeature(name="text", columns=[f"text_{i}" for i in range(TEXT_DIM)])],
        tasks=[
            TaskSpec(name="click", type="binary", label_column="click"),
            TaskSpec(name="add_to_cart", type="binary", label_column="add_to_cart", parent="click"),
            TaskSpec(name="purchase", type="binary", label_column="purchase", parent="click"),
            TaskSpec(
                name="purchase_value",
                type="regression",
                label_column="purchase_value",
                parent="purchase",
            ),
        ],
    )


@dataclass
class FunnelData:
    spec: FeatureSpec
    batch: Batch
    """Every column of ``spec`` plus ``user_id``, one row per impression."""
    oracle: dict[str, Tensor]
    """True unconditional probability (binary) or expected value (regression) per task."""

    def batches(self, batch_size: int, seed: int | None = None) -> list[Batch]:
        """Mini-batches, shuffled when ``seed`` is given."""
        rows = len(self.batch["click"])
        order = torch.arange(rows)
        if seed is not None:
            order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
        return [
            {k: v[order[i : i + batch_size]] for k, v in self.batch.items()}
            for i in range(0, rows, batch_size)
        ]


def _effects(seed: int, name: str, size: int, scale: float) -> np.ndarray:
    salt = sum(ord(c) for c in name)
    return np.random.default_rng([seed, salt]).normal(0.0, scale, size)


def make_funnel_data(
    rows: int,
    *,
    user_vocab: int = 50,
    item_vocab: int = 40,
    effects_seed: int = 0,
    sample_seed: int = 1,
) -> FunnelData:
    rng = np.random.default_rng([effects_seed, sample_seed])
    user = rng.integers(1, user_vocab, rows)
    item = rng.integers(1, item_vocab, rows)
    z = rng.normal(0.0, 1.0, (rows, 2))
    text = rng.normal(0.0, 1.0, (rows, TEXT_DIM))
    w_text = np.random.default_rng([effects_seed, 99]).normal(0.0, 0.5, (3, TEXT_DIM))

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 / (1.0 + np.exp(-x)))

    click_logit = (
        -1.0
        + _effects(effects_seed, "click_user", user_vocab, 0.8)[user]
        + _effects(effects_seed, "click_item", item_vocab, 0.8)[item]
        + 0.6 * z[:, 0]
        + 0.5 * z[:, 0] * z[:, 1]
        + text @ w_text[0]
    )
    cart_logit = (
        -0.5
        + _effects(effects_seed, "cart_item", item_vocab, 0.8)[item]
        + 0.6 * z[:, 1]
        + text @ w_text[1]
    )
    buy_logit = (
        -0.8
        + _effects(effects_seed, "buy_item", item_vocab, 0.8)[item]
        + _effects(effects_seed, "buy_user", user_vocab, 0.5)[user]
        - 0.5 * z[:, 0]
        + text @ w_text[2]
    )
    p_click, p_cart, p_buy = sigmoid(click_logit), sigmoid(cart_logit), sigmoid(buy_logit)
    value_mean = 3.0 + 0.5 * z[:, 1] + _effects(effects_seed, "value_item", item_vocab, 0.3)[item]
    click = rng.random(rows) < p_click
    cart = click & (rng.random(rows) < p_cart)
    purchase = click & (rng.random(rows) < p_buy)
    value = np.where(purchase, value_mean + rng.normal(0.0, 0.3, rows), 0.0)

    def f32(x: np.ndarray) -> Tensor:
        return torch.as_tensor(x, dtype=torch.float32)

    batch: Batch = {
        "user": torch.as_tensor(user, dtype=torch.int64),
        "item": torch.as_tensor(item, dtype=torch.int64),
        "user_id": torch.as_tensor(user, dtype=torch.int64),
        "price": f32(DENSE_MEAN + DENSE_STD * z[:, 0]),
        "recency": f32(DENSE_MEAN + DENSE_STD * z[:, 1]),
        "click": f32(click),
        "add_to_cart": f32(cart),
        "purchase": f32(purchase),
        "purchase_value": f32(value),
    }
    for i in range(TEXT_DIM):
        batch[f"text_{i}"] = f32(text[:, i])
    oracle = {
        "click": f32(p_click),
        "add_to_cart": f32(p_click * p_cart),
        "purchase": f32(p_click * p_buy),
        "purchase_value": f32(p_click * p_buy * value_mean),
    }
    return FunnelData(funnel_spec(user_vocab, item_vocab), batch, oracle)
