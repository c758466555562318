"""Exact, mergeable evaluation metrics.

Every metric is computed from state that merges exactly across data shards:

- AUC and GAUC from a *score-count table*: the unique ``(group, score)`` pairs
  seen, with their positive and negative label counts. Tables from any number
  of shards concatenate and re-aggregate into the table of the whole data, so
  the merged AUC is the AUC of all rows, never an average of per-shard AUCs.
  Ties count one half (the Mann-Whitney form, equal to scikit-learn's
  trapezoidal ``roc_auc_score``).
- GAUC: per-group AUC weighted by the group's impressions (rows), over groups
  that have both a positive and a negative; groups with a single class are
  skipped. The reference is ``sum_g n_g * roc_auc_score(y_g, p_g) / sum_g n_g``.
- log loss, calibration (mean prediction / mean label) and RMSE from sums that
  add up across shards (float64).
- The evidence behind each AUC/GAUC: the rows and positives it was computed on, and a
  bootstrap 95 % interval. The bootstrap is the Poisson bootstrap (every row drawn
  Poisson(1) times) applied to the score-count table: an entry with ``p`` positives gets
  Poisson(``p``) of them, exactly as if each row had been redrawn, so it costs one pass
  over the table per replicate, not over the rows.
- Undefined values (one class only, no positive label for calibration) are NaN;
  ``strict_json`` writes them as ``null`` so every metrics file is strict JSON.

Across workers, ``MetricAccumulator.synced(process_group)`` all-gathers the
tables and all-reduces the sums with ``torch.distributed`` (gloo on CPU), and
every rank ends with the same, exact result.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor

from mtlrec.feature_spec import FeatureSpec

LOGLOSS_EPS = float(np.finfo(np.float64).eps)  # as scikit-learn clips float64 predictions
_COMPACT_ROWS = 1 << 20
BOOTSTRAP_REPLICATES = 100
BOOTSTRAP_SEED = 15
MIN_POSITIVES = 30  # fewer positives than this: the report warns that the AUC is thin evidence


def strict_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (``JSON.parse`` rejects them):
    non-finite floats become null."""

    def clean(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {k: clean(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [clean(v) for v in item]
        return item

    return json.dumps(clean(value), allow_nan=False, **kwargs)


@dataclass
class ScoreTable:
    """Positive / negative counts per unique ``(group, score)``; mergeable exactly."""

    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    neg: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_rows(cls, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> ScoreTable:
        positive = labels > 0.5
        return cls(
            groups.astype(np.int64),
            scores.astype(np.float64),
            positive.astype(np.int64),
            (~positive).astype(np.int64),
        ).compacted()

    @classmethod
    def concat(cls, tables: list[ScoreTable]) -> ScoreTable:
        return cls(
            np.concatenate([t.groups for t in tables]),
            np.concatenate([t.scores for t in tables]),
            np.concatenate([t.pos for t in tables]),
            np.concatenate([t.neg for t in tables]),
        ).compacted()

    def compacted(self, ignore_groups: bool = False) -> ScoreTable:
        """Sorted by (group, score), one entry per unique key."""
        groups = np.zeros_like(self.groups) if ignore_groups else self.groups
        order = np.lexsort((self.scores, groups))
        g, s = groups[order], self.scores[order]
        if len(g) == 0:
            return ScoreTable(g, s, self.pos[order], self.neg[order])
        new_key = np.ones(len(g), dtype=bool)
        new_key[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
        starts = np.flatnonzero(new_key)
        return ScoreTable(
            g[starts],
            s[starts],
            np.add.reduceat(self.pos[order], starts),
            np.add.reduceat(self.neg[order], starts),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def group_aucs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group (of a compacted table): AUC, positives, negatives."""
        if len(self) == 0:
            return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
        starts = np.flatnonzero(np.r_[True, self.groups[1:] != self.groups[:-1]])
        cum_neg = np.cumsum(self.neg)
        before_group = np.r_[0, cum_neg[starts[1:] - 1]]
        row_group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(self)]))
        neg_below = cum_neg - self.neg - before_group[row_group]
        wins = self.pos * (neg_below + 0.5 * self.neg)
        pos = np.add.reduceat(self.pos, starts)
        neg = np.add.reduceat(self.neg, starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = np.add.reduceat(wins, starts) / (pos.astype(np.float64) * neg)
        return auc, pos, neg

    def auc(self) -> float:
        auc, _, _ = self.compacted(ignore_groups=True).group_aucs()
        return float(auc[0]) if len(auc) else float("nan")

    def gauc(self) -> float:
        auc, pos, neg = self.group_aucs()
        valid = (pos > 0) & (neg > 0)
        if not valid.any():
            return float("nan")
        weights = (pos + neg)[valid].astype(np.float64)
        return float((auc[valid] * weights).sum() / weights.sum())

    def resampled(self, rng: np.random.Generator) -> ScoreTable:
        """One Poisson-bootstrap replicate (entries whose counts drop to 0 stay, harmless)."""
        return ScoreTable(self.groups, self.scores, rng.poisson(self.pos), rng.poisson(self.neg))

    def intervals(self, with_gauc: bool) -> dict[str, float]:
        """Bootstrap 95 % intervals of AUC (and GAUC): ``<metric>_ci_low/high``."""
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        overall = self.compacted(ignore_groups=True)
        draws: dict[str, list[float]] = {"auc": [], "gauc": []}
        for _ in range(BOOTSTRAP_REPLICATES):
            # ``overall`` is compacted already: one group, sorted by score, no re-sort.
            auc, _, _ = overall.resampled(rng).group_aucs()
            draws["auc"].append(float(auc[0]) if len(auc) else math.nan)
            if with_gauc:
                draws["gauc"].append(self.resampled(rng).gauc())
        out = {}
        for metric, values in draws.items():
            finite = np.array([v for v in values if math.isfinite(v)])
            if metric == "gauc" and not with_gauc:
                continue
            low, high = np.quantile(finite, [0.025, 0.975]) if len(finite) else (math.nan, math.nan)
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = float(low), float(high)
        return out


def group_keys(values: Tensor | np.ndarray) -> np.ndarray:
    """int64 group keys: integer ids as they are, anything else (strings) by a stable hash."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    # pandas' hash is seeded with a fixed key, so every process hashes alike.
    return pd.util.hash_array(array.astype(object)).view(np.int64)


@dataclass
class TaskState:
    """Everything needed for one task's metrics; ``sums`` add up across shards."""

    kind: str
    sums: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float64))
    table: ScoreTable = field(default_factory=ScoreTable)
    pending: list[ScoreTable] = field(default_factory=list)
    pending_rows: int = 0

    # sums: [rows, sum of predictions, sum of labels, sum of log loss or of squared error]

    def update(self, pred: np.ndarray, label: np.ndarray, groups: np.ndarray) -> None:
        keep = np.isfinite(label)
        pred, label, groups = pred[keep].astype(np.float64), label[keep], groups[keep]
        if self.kind == "binary":
            p = np.clip(pred, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
            err = -(label * np.log(p) + (1 - label) * np.log1p(-p)).sum()
            self.pending.append(
                ScoreTable(
                    groups, pred, (label > 0.5).astype(np.int64), (label <= 0.5).astype(np.int64)
                )
            )
            self.pending_rows += len(pred)
            if self.pending_rows >= _COMPACT_ROWS:
                self.flush()
        else:
            err = ((pred - label) ** 2).sum()
        self.sums += np.array([len(pred), pred.sum(), label.sum(), err])

    def flush(self) -> None:
        if self.pending:
            self.table = ScoreTable.concat([self.table, *self.pending])
            self.pending, self.pending_rows = [], 0

    def merged(self, other: TaskState) -> TaskState:
        self.flush()
        other.flush()
        return TaskState(
            self.kind, self.sums + other.sums, ScoreTable.concat([self.table, other.table])
        )

    def compute(self, with_gauc: bool) -> dict[str, float]:
        self.flush()
        count, sum_pred, sum_label, err = self.sums
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "count": float(count),
                "mean_prediction": float(sum_pred / count),
                "mean_label": float(sum_label / count),
                # Undefined, not infinite, when no label is positive (strict JSON: null).
                "calibration": float(sum_pred / sum_label) if sum_label else math.nan,
            }
            if self.kind == "binary":
                out["logloss"] = float(err / count)
                out["positives"] = float(self.table.pos.sum())
                out["auc"] = self.table.auc()
                if with_gauc:
                    out["gauc"] = self.table.gauc()
                out.update(self.table.intervals(with_gauc))
            else:
                out["rmse"] = float(np.sqrt(err / count))
        return out


def _all_gather_array(array: np.ndarray, group: dist.ProcessGroup | None) -> np.ndarray:
    """Concatenation of every rank's 1-D array (variable lengths), in rank order."""
    world = dist.get_world_size(group)
    local = torch.from_numpy(np.ascontiguousarray(array))
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.numel()], dtype=torch.int64), group=group)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=local.dtype)
    padded[: local.numel()] = local
    gathered = [torch.zeros(longest, dtype=local.dtype) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return np.concatenate([g[: int(n)].numpy() for g, n in zip(gathered, sizes, strict=True)])


class MetricAccumulator:
    """Per-task metric state over the batches of one evaluation pass."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.tasks = {t.name: (t.type, t.label_column) for t in spec.tasks}
        self.states = {name: TaskState(kind) for name, (kind, _) in self.tasks.items()}
        self.has_groups = False

    def update(
        self,
        predictions: dict[str, Tensor],
        labels: dict[str, Tensor],
        groups: Tensor | np.ndarray | None = None,
    ) -> None:
        """Add one batch: ``predict`` outputs, the batch (label columns), optional group ids."""
        keys = None if groups is None else group_keys(groups)
        self.has_groups = self.has_groups or keys is not None
        for name, (_, label_column) in self.tasks.items():
            pred = predictions[name].detach().to(torch.float64).cpu().numpy()
            label = labels[label_column].detach().to(torch.float64).cpu().numpy()
            rows = keys if keys is not None else np.zeros(len(pred), np.int64)
            self.states[name].update(pred, label, rows)

    def merged(self, other: MetricAccumulator) -> MetricAccumulator:
        out = MetricAccumulator.__new__(MetricAccumulator)
        out.tasks = self.tasks
        out.states = {t: self.states[t].merged(other.states[t]) for t in self.tasks}
        out.has_groups = self.has_groups or other.has_groups
        return out

    def synced(self, group: dist.ProcessGroup | None = None) -> MetricAccumulator:
        """The accumulator of all ranks' data (exact), identical on every rank."""
        if not (dist.is_available() and dist.is_initialized()):
            return self
        out = MetricAccumulator.__new__(MetricAccumulator)
        out.tasks = self.tasks
        out.states = {}
        flag = torch.tensor([int(self.has_groups)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        out.has_groups = bool(flag.item())
        for name, state in self.states.items():
            state.flush()
            sums = torch.from_numpy(state.sums.copy())
            dist.all_reduce(sums, group=group)
            t = state.table
            table = ScoreTable(
                *(_all_gather_array(a, group) for a in (t.groups, t.scores, t.pos, t.neg))
            )
            out.states[name] = TaskState(state.kind, sums.numpy(), table.compacted())
        return out

    def compute(self) -> dict[str, float]:
        """``{"<task>/<metric>": value}``; NaN where a metric is undefined (one class only)."""
        return {
            f"{task}/{metric}": value
            for task, state in self.states.items()
            for metric, value in state.compute(self.has_groups).items()
        }
