"""Metrics equal scikit-learn's, on the whole data and when merged from shards.

GAUC reference: per-user ``roc_auc_score`` weighted by the user's impressions,
users whose labels are all one class skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, mean_squared_error, roc_auc_score

from mtl_model.metrics import MetricAccumulator, ScoreTable
from mtlrec.feature_spec import FeatureSpec, TaskSpec

SPEC = FeatureSpec(
    tasks=[
        TaskSpec(name="click", type="binary", label_column="click"),
        TaskSpec(name="value", type="regression", label_column="value", parent="click"),
    ]
)


def _random_data(seed: int, rows: int = 3000, ties: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    score = rng.uniform(0.001, 0.999, rows)
    if ties:
        score = np.round(score, 2)
    users = rng.integers(0, 60, rows)
    label = (rng.random(rows) < 0.2 + 0.6 * score).astype(np.float64)
    # A few users with a single class, which GAUC must skip.
    label[users == 0] = 1.0
    label[users == 1] = 0.0
    value = rng.normal(2.0, 1.0, rows)
    return {
        "score": score,
        "label": label,
        "user": users,
        "value": value,
        "value_pred": value + rng.normal(0, 0.5, rows),
    }


def _reference_gauc(score: np.ndarray, label: np.ndarray, users: np.ndarray) -> float:
    total = weight = 0.0
    for user in np.unique(users):
        rows = users == user
        if len(np.unique(label[rows])) < 2:
            continue
        total += rows.sum() * roc_auc_score(label[rows], score[rows])
        weight += rows.sum()
    return total / weight


def _accumulate(data: dict[str, np.ndarray], rows: np.ndarray) -> MetricAccumulator:
    acc = MetricAccumulator(SPEC)
    for chunk in np.array_split(rows, 4):  # several batches per shard
        acc.update(
            {
                "click": torch.tensor(data["score"][chunk], dtype=torch.float64),
                "value": torch.tensor(data["value_pred"][chunk]),
            },
            {
                "click": torch.tensor(data["label"][chunk]),
                "value": torch.tensor(data["value"][chunk]),
            },
            torch.tensor(data["user"][chunk]),
        )
    return acc


@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_gauc_equal_sklearn(ties: bool) -> None:
    data = _random_data(seed=3, ties=ties)
    metrics = _accumulate(data, np.arange(len(data["score"]))).compute()
    assert metrics["click/auc"] == pytest.approx(
        roc_auc_score(data["label"], data["score"]), abs=1e-9
    )
    expected_gauc = _reference_gauc(data["score"], data["label"], data["user"])
    assert metrics["click/gauc"] == pytest.approx(expected_gauc, abs=1e-9)


@pytest.mark.parametrize("ties", [False, True])
def test_shards_merge_exactly(ties: bool) -> None:
    data = _random_data(seed=4, ties=ties)
    rows = np.random.default_rng(0).permutation(len(data["score"]))
    shards = np.split(rows, [400, 1900])  # unequal shards; users span several shards
    merged = _accumulate(data, shards[0])
    for shard in shards[1:]:
        merged = merged.merged(_accumulate(data, shard))
    metrics = merged.compute()
    assert metrics["click/auc"] == pytest.approx(
        roc_auc_score(data["label"], data["score"]), abs=1e-9
    )
    expected_gauc = _reference_gauc(data["score"], data["label"], data["user"])
    assert metrics["click/gauc"] == pytest.approx(expected_gauc, abs=1e-9)
    assert metrics["click/logloss"] == pytest.approx(
        log_loss(data["label"], data["score"]), abs=1e-9
    )
    rmse = np.sqrt(mean_squared_error(data["value"], data["value_pred"]))
    assert metrics["value/rmse"] == pytest.approx(rmse, abs=1e-9)
    # Averaging per-shard AUCs would not be exact: the merge must not be that.
    shard_aucs = [roc_auc_score(data["label"][s], data["score"][s]) for s in shards]
    assert abs(np.mean(shard_aucs) - metrics["click/auc"]) > 1e-6


def test_calibration_counts_and_undefined_labels() -> None:
    acc = MetricAccumulator(SPEC)
    acc.update(
        {"click": torch.tensor([0.2, 0.4, 0.9, 0.5]), "value": torch.tensor([1.0, 2.0, 3.0, 4.0])},
        {
            "click": torch.tensor([0.0, 1.0, 1.0, float("nan")]),
            "value": torch.tensor([1.0, 1.0, 1.0, 1.0]),
        },
    )
    metrics = acc.compute()
    assert metrics["click/count"] == 3
    assert metrics["click/calibration"] == pytest.approx((0.2 + 0.4 + 0.9) / 2)
    assert metrics["click/auc"] == pytest.approx(1.0)
    assert "click/gauc" not in metrics  # no group column given
    assert metrics["value/calibration"] == pytest.approx(10.0 / 4)
    assert metrics["value/rmse"] == pytest.approx(np.sqrt((0 + 1 + 4 + 9) / 4))


def test_string_user_ids_group_like_integer_ids() -> None:
    data = _random_data(seed=5, rows=500)
    by_int = _accumulate(data, np.arange(500)).compute()["click/gauc"]
    acc = MetricAccumulator(SPEC)
    acc.update(
        {"click": torch.tensor(data["score"]), "value": torch.tensor(data["value_pred"])},
        {"click": torch.tensor(data["label"]), "value": torch.tensor(data["value"])},
        np.array([f"user-{u}" for u in data["user"]], dtype=object),
    )
    assert acc.compute()["click/gauc"] == pytest.approx(by_int, abs=1e-12)


def test_single_class_gives_nan_auc() -> None:
    table = ScoreTable.from_rows(np.array([0.1, 0.2]), np.array([1.0, 1.0]), np.zeros(2, int))
    assert np.isnan(table.auc())
    assert np.isnan(table.gauc())
