"""The numbers of the offline evaluation report (``jobs/report.py``), without Spark.

- :class:`RunSummary`: a training run directory as ``finalize_run`` writes it. Model
  metrics are read from its metrics.json and never recomputed, so the report states
  exactly what the run recorded.
- :func:`oracle_metrics`: the best achievable per-task metrics on the test days, from
  the generator's ground truth joined to gold/examples by impression id (the truth's
  event_id). The oracle's score is the true unconditional probability: p_click for
  click, p_click x p_add_to_cart_given_click for add_to_cart, p_click x
  p_purchase_given_click for purchase, and the expected log purchase value for
  purchase_value. AUC uses the same score-count table as training's metrics.
- :func:`calibration_bins`: a reliability curve of a model's test predictions.
- :func:`recommendation_quality`: Recall@K and NDCG@K of a day's purchases against the
  recommendations scored for that day, catalogue coverage and popularity bias.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from mtl_model.artifact import load_artifact
from mtl_model.metrics import ScoreTable
from mtl_model.scoring import feature_columns, predict_frame
from mtlrec.errors import InputError
from mtlrec.feature_spec import FeatureSpec
from mtlrec.lake import Lake
from mtlrec.tables import GOLD_EXAMPLES, SILVER_EVENTS, SILVER_ITEMS

BASELINE_ARCHITECTURE = "single_task"
ENGAGEMENT_TYPES = ("click", "add_to_cart", "purchase")

TruthColumns = Mapping[str, np.ndarray]
ORACLE_SCORES: dict[str, Callable[[TruthColumns], np.ndarray]] = {
    "click": lambda t: t["p_click"],
    "add_to_cart": lambda t: t["p_click"] * t["p_add_to_cart_given_click"],
    "purchase": lambda t: t["p_click"] * t["p_purchase_given_click"],
    "purchase_value": lambda t: t["expected_log_purchase_value"],
}
_TRUTH_COLUMNS = [
    "event_id",
    "p_click",
    "p_add_to_cart_given_click",
    "p_purchase_given_click",
    "expected_log_purchase_value",
]


class ReportInputError(InputError, ValueError):
    """A run directory or table the report cannot use; the message names it."""


@dataclass(frozen=True)
class RunSummary:
    name: str
    directory: Path
    architecture: str
    final: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]]
    table_versions: dict[str, int]
    spec: FeatureSpec
    model_version: str

    @classmethod
    def load(cls, directory: Path, model_version: str | None = None) -> RunSummary:
        """Read a run directory; ``model_version`` None derives it as scoring does."""
        paths = {name: directory / name for name in ("metrics.json", "config.json", "model.pt")}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ReportInputError(f"run {directory} lacks {missing}: is it a finished run?")
        metrics = json.loads(paths["metrics.json"].read_text())
        config = json.loads(paths["config.json"].read_text())
        payload = paths["model.pt"].read_bytes()
        return cls(
            name=directory.name,
            directory=directory,
            architecture=str(config["model"]["architecture"]),
            # null (strict JSON's undefined) reads back as NaN.
            final={k: math.nan if v is None else float(v) for k, v in metrics["final"].items()},
            best_epoch=int(metrics["best_epoch"]),
            history=metrics["history"],
            table_versions={k: int(v) for k, v in metrics.get("table_versions", {}).items()},
            spec=load_artifact(paths["model.pt"]).spec,
            model_version=model_version or hashlib.sha256(payload).hexdigest()[:12],
        )

    @property
    def is_baseline(self) -> bool:
        return self.architecture == BASELINE_ARCHITECTURE

    def task_metrics(self, split: str = "test") -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` of ``split`` exactly as metrics.json records them."""
        out: dict[str, dict[str, float]] = {}
        for task in self.spec.tasks:
            prefix = f"{split}/{task.name}/"
            out[task.name] = {
                k[len(prefix) :]: v for k, v in self.final.items() if k.startswith(prefix)
            }
        return out


@dataclass
class OracleMetrics:
    """Per-task oracle metrics on the test days, and how many test rows had truth."""

    days: list[str]
    test_rows: int
    matched_rows: int
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)


def _examples_version(run: RunSummary) -> int | None:
    return run.table_versions.get(GOLD_EXAMPLES)


def held_out_examples(lake: Lake, run: RunSummary, columns: Sequence[str]) -> pd.DataFrame:
    """The run's test split (at the gold/examples version it trained on)."""
    return lake.read_arrow(
        GOLD_EXAMPLES,
        version=_examples_version(run),
        filters=[("split", "=", "test")],
        columns=list(columns),
    ).to_pandas()


def read_truth(truth_root: Path, days: Sequence[str]) -> pd.DataFrame:
    """The generator's per-impression truth of ``days`` (event_id and probabilities)."""
    dataset = pads.dataset(truth_root / "impressions", format="parquet", partitioning="hive")
    table = dataset.to_table(
        columns=_TRUTH_COLUMNS, filter=pads.field("dt").isin([str(d) for d in days])
    )
    return table.to_pandas()


def oracle_metrics(lake: Lake, run: RunSummary, truth_root: Path) -> OracleMetrics:
    spec = run.spec
    days = list(spec.test_days)
    examples = held_out_examples(lake, run, ["impression_id", *spec.label_columns()])
    truth = read_truth(truth_root, days)
    joined = examples.merge(truth, left_on="impression_id", right_on="event_id", how="inner")
    result = OracleMetrics(days=days, test_rows=len(examples), matched_rows=len(joined))
    columns = {c: joined[c].to_numpy(np.float64) for c in _TRUTH_COLUMNS[1:]}
    for task in spec.tasks:
        oracle = ORACLE_SCORES.get(task.name)
        if oracle is None or joined.empty:
            continue
        score = oracle(columns)
        label = joined[task.label_column].to_numpy(np.float64)
        if task.type == "binary":
            table = ScoreTable.from_rows(score, label, np.zeros(len(score), np.int64))
            result.tasks[task.name] = {"auc": table.auc()}
        else:
            result.tasks[task.name] = {"rmse": float(np.sqrt(np.mean((score - label) ** 2)))}
    return result


def lift_share(auc: float, oracle_auc: float) -> float:
    """The model's AUC lift over 0.5 as a share of the oracle's (DESIGN.md 7)."""
    if not (math.isfinite(auc) and math.isfinite(oracle_auc)) or oracle_auc <= 0.5:
        return float("nan")
    return (auc - 0.5) / (oracle_auc - 0.5)


def model_predictions(
    lake: Lake, run: RunSummary, max_rows: int, batch_size: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labels, ``score_<task>`` predictions) of the run's model on its first test rows."""
    spec = run.spec
    columns = feature_columns(spec)
    frame = held_out_examples(lake, run, [*columns.names(), *spec.label_columns()]).head(max_rows)
    model = load_artifact(run.directory / "model.pt").build()
    parts = [
        predict_frame(model, frame.iloc[start : start + batch_size], columns)
        for start in range(0, len(frame), batch_size)
    ]
    scores = pd.concat(parts) if parts else pd.DataFrame()
    return frame[spec.label_columns()], scores


def calibration_bins(
    predicted: np.ndarray, label: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean prediction and mean label in ``bins`` equal-count bins of the prediction."""
    order = np.argsort(predicted, kind="stable")
    groups = [g for g in np.array_split(order, bins) if len(g)]
    return (
        np.array([predicted[g].mean() for g in groups]),
        np.array([label[g].mean() for g in groups]),
    )


@dataclass(frozen=True)
class RecommendationQuality:
    day: str
    model_version: str
    k: int
    users_scored: int
    purchasers: int
    purchasers_scored: int
    recall_at_k: float
    ndcg_at_k: float
    popular_recall_at_k: float
    popular_ndcg_at_k: float
    catalogue_coverage: float
    mean_popularity_percentile: float
    top_decile_share: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ranking_metrics(
    ranked: Mapping[str, list[str]], purchased: Mapping[str, set[str]], k: int
) -> tuple[float, float]:
    """Mean Recall@K and NDCG@K (binary relevance) over the users in ``purchased``."""
    recalls, ndcgs = [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for user, items in purchased.items():
        top = ranked.get(user, [])[:k]
        hits = np.array([item in items for item in top], dtype=np.float64)
        recalls.append(hits.sum() / len(items))
        ideal = discounts[: min(len(items), k)].sum()
        ndcgs.append(float((hits * discounts[: len(hits)]).sum() / ideal))
    if not recalls:
        return float("nan"), float("nan")
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def recommendation_quality(
    lake: Lake, table: str, day: str, model_version: str, k: int
) -> RecommendationQuality | None:
    """Quality of the recommendations scored for ``day`` by ``model_version``; None when
    there are none."""
    if not lake.exists(table):
        return None
    recs = lake.read_arrow(
        table,
        filters=[("scored_dt", "=", day), ("model_version", "=", model_version)],
        columns=["user_id", "rank", "item_id"],
    ).to_pandas()
    if recs.empty:
        return None
    recs = recs.sort_values(["user_id", "rank"])
    ranked = recs.groupby("user_id")["item_id"].apply(list).to_dict()

    purchases = lake.read_arrow(
        SILVER_EVENTS, filters=[("dt", "=", day)], columns=["user_id", "item_id", "event_type"]
    ).to_pandas()
    purchases = purchases[purchases["event_type"] == "purchase"]
    purchased = purchases.groupby("user_id")["item_id"].apply(set).to_dict()
    scored_purchasers = {u: items for u, items in purchased.items() if u in ranked}
    recall, ndcg = _ranking_metrics(ranked, scored_purchasers, k)

    popularity = item_popularity(lake, day)
    top_popular = list(popularity.sort_values(ascending=False, kind="stable").index[:k])
    popular_recall, popular_ndcg = _ranking_metrics(
        dict.fromkeys(scored_purchasers, top_popular), scored_purchasers, k
    )
    percentile = popularity.rank(pct=True, method="average")
    recommended = recs["item_id"]
    rec_percentile = recommended.map(percentile).fillna(0.0)
    return RecommendationQuality(
        day=day,
        model_version=model_version,
        k=k,
        users_scored=len(ranked),
        purchasers=len(purchased),
        purchasers_scored=len(scored_purchasers),
        recall_at_k=recall,
        ndcg_at_k=ndcg,
        popular_recall_at_k=popular_recall,
        popular_ndcg_at_k=popular_ndcg,
        catalogue_coverage=recommended.nunique() / max(1, len(popularity)),
        mean_popularity_percentile=float(rec_percentile.mean()),
        top_decile_share=float((rec_percentile > 0.9).mean()),
    )


def item_popularity(lake: Lake, day: str) -> pd.Series:
    """Engagement events (click, cart, purchase) per catalogue item before ``day``."""
    items = lake.read_arrow(SILVER_ITEMS, columns=["item_id"]).to_pandas()["item_id"]
    days = sorted(
        str(p["dt"]) for p in lake.snapshot_partitions(SILVER_EVENTS) if str(p["dt"]) < day
    )
    events = lake.read_arrow(
        SILVER_EVENTS, filters=[("dt", "in", days)], columns=["item_id", "event_type"]
    ).to_pandas()
    counts = events[events["event_type"].isin(ENGAGEMENT_TYPES)].groupby("item_id").size()
    return counts.reindex(items.unique(), fill_value=0).astype(np.float64)
