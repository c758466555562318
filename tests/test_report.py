"""The offline report states exactly what the runs recorded, and its own figures (oracle,
recommendation quality) agree with independent recomputations."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from scoring_pipeline import Pipeline, pipeline, run_job, score_test_day
from sklearn.metrics import roc_auc_score

from jobs.report import BINARY_METRICS, REGRESSION_METRICS, fmt, interval
from jobs.report import main as report_main
from mtl_model.metrics import MIN_POSITIVES, TaskState, strict_json

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@dataclass(frozen=True)
class Report:
    out: Path
    last_line: str
    numbers: dict[str, Any]
    markdown: str
    html: str


@pytest.fixture(scope="module")
def built(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return pipeline(tmp_path_factory)


@pytest.fixture(scope="module")
def report(built: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Report:
    assert score_test_day(built).exit_code == 0
    out = tmp_path_factory.mktemp("report")
    runs = [arg for r in ("mmoe", "single_task") for arg in ("--run", str(built.runs[r]))]
    code, last = run_job(report_main, [*runs, "--out", str(out), *built.cli()])
    assert code == 0, last
    return Report(
        out,
        last,
        json.loads((out / "report.json").read_text()),
        (out / "summary.md").read_text(),
        (out / "report.html").read_text(),
    )


def _metrics(built: Pipeline, run: str) -> dict[str, Any]:
    return dict(json.loads((built.runs[run] / "metrics.json").read_text()))


def test_report_numbers_equal_the_runs_metrics_json(built: Pipeline, report: Report) -> None:
    baseline = _metrics(built, "single_task")["final"]
    assert report.numbers["baseline"] == "single_task"
    for run in ("mmoe", "single_task"):
        recorded = _metrics(built, run)
        final = recorded["final"]
        entry = report.numbers["runs"][run]
        assert entry["best_epoch"] == recorded["best_epoch"]
        for task in built.spec.tasks:
            stated = entry["test"][task.name]
            prefix = f"test/{task.name}/"
            assert stated == {k[len(prefix) :]: v for k, v in final.items() if k.startswith(prefix)}
            if task.type == "binary":
                # Each AUC/GAUC with its evidence: interval, positives and rows.
                value = {m: final[f"{prefix}{m}"] for m in BINARY_METRICS}
                delta = final[f"{prefix}auc"] - baseline[f"{prefix}auc"]
                cells = [
                    fmt(value["auc"]), interval(stated, "auc"),
                    fmt(value["gauc"]), interval(stated, "gauc"),
                    str(int(stated["positives"])), str(int(stated["count"])),
                    fmt(value["logloss"]), fmt(value["calibration"]),
                    fmt(delta) if run == "mmoe" else "–",
                ]  # fmt: skip
                assert stated["auc_ci_low"] <= stated["auc"] <= stated["auc_ci_high"]
            else:
                cells = [fmt(final[f"{prefix}{m}"]) for m in REGRESSION_METRICS]
            row = "| " + " | ".join([task.name, *cells]) + " |"
            assert row in report.markdown, row
            for cell in cells:
                assert f"<td>{cell}</td>" in report.html
    assert str(report.out / "report.html") in report.last_line


def test_plots_are_written_and_linked(report: Report) -> None:
    for name in ("curves.png", "calibration_mmoe.png", "calibration_single_task.png"):
        assert (report.out / name).stat().st_size > 1000, name
        assert f'src="{name}"' in report.html


def test_oracle_auc_equals_sklearn_on_truth_joined_to_the_test_split(
    built: Pipeline, report: Report
) -> None:
    test = built.lake.read_arrow("gold/examples", filters=[("split", "=", "test")]).to_pandas()
    truth = pd.read_parquet(Path(built.cfg.generator.truth_root) / "impressions")
    truth = truth[truth["dt"].astype(str).isin(built.spec.test_days)]
    joined = test.merge(truth, left_on="impression_id", right_on="event_id")
    oracle = report.numbers["runs"]["mmoe"]["oracle"]
    assert oracle["matched_rows"] == len(joined) == oracle["test_rows"] == len(test)
    scores = {
        "click": joined["p_click"],
        "add_to_cart": joined["p_click"] * joined["p_add_to_cart_given_click"],
        "purchase": joined["p_click"] * joined["p_purchase_given_click"],
    }
    for task, score in scores.items():
        want = roc_auc_score(joined[f"label_{task}"], score)
        assert oracle["tasks"][task]["auc"] == pytest.approx(want, abs=1e-12), task
        # The oracle knows the true probabilities: it beats chance clearly.
        assert want > 0.6, task


def test_recommendation_quality_matches_a_direct_computation(
    built: Pipeline, report: Report
) -> None:
    day = built.spec.test_days[0]
    (quality,) = [q for q in report.numbers["recommendations"] if q["run"] == "mmoe"]
    k = built.cfg.score.report.k
    recs = built.lake.read_arrow(
        "gold/recommendations",
        filters=[("scored_dt", "=", day), ("model_version", "=", quality["model_version"])],
    ).to_pandas()
    events = built.lake.read_arrow("silver/events", filters=[("dt", "=", day)]).to_pandas()
    bought = events[events["event_type"] == "purchase"].groupby("user_id")["item_id"]
    purchased = {u: set(items) for u, items in bought}
    recalls, ndcgs = [], []
    for user, items in purchased.items():
        top = recs[recs["user_id"] == user].sort_values("rank")["item_id"].tolist()[:k]
        if not top:
            continue
        gains = [1.0 / math.log2(i + 2) for i, item in enumerate(top) if item in items]
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(items), k)))
        recalls.append(sum(item in items for item in top) / len(items))
        ndcgs.append(sum(gains) / ideal)
    assert quality["purchasers"] == len(purchased)
    assert quality["purchasers_scored"] == len(recalls) > 0
    assert quality["recall_at_k"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert quality["ndcg_at_k"] == pytest.approx(np.mean(ndcgs), abs=1e-12)
    catalogue = built.lake.read_arrow("silver/items").num_rows
    assert quality["catalogue_coverage"] == pytest.approx(recs["item_id"].nunique() / catalogue)
    assert 0.0 <= quality["mean_popularity_percentile"] <= 1.0
    assert quality["users_scored"] == recs["user_id"].nunique()


def _strict(text: str) -> Any:
    """``json.loads`` that rejects NaN / Infinity, as ``JSON.parse`` does."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_report_and_metrics_files_are_strict_json(built: Pipeline, report: Report) -> None:
    _strict((report.out / "report.json").read_text())
    for run in ("mmoe", "single_task"):
        _strict((built.runs[run] / "metrics.json").read_text())


def test_tasks_with_few_positives_carry_a_warning(built: Pipeline, report: Report) -> None:
    for run in ("mmoe", "single_task"):
        final = _metrics(built, run)["final"]
        warned = report.numbers["runs"][run]["warnings"]
        for task in built.spec.tasks:
            if task.type != "binary":
                continue
            positives = int(final[f"test/{task.name}/positives"])
            thin = positives < MIN_POSITIVES
            assert any(f": {task.name} has only" in w for w in warned) == thin, (task, positives)
            line = f"> **Warning**: {run}: {task.name} has only {positives} positives"
            assert (line in report.markdown) == thin


def test_undefined_metrics_are_null_and_intervals_cover_the_estimate() -> None:
    rng = np.random.default_rng(4)
    state = TaskState("regression")
    state.update(rng.random(50), np.zeros(50), np.zeros(50, np.int64))
    # An all-zero regression label: calibration is undefined, written as null, never Infinity.
    assert _strict(strict_json(state.compute(False)))["calibration"] is None
    binary = TaskState("binary")
    score = rng.random(4000)
    binary.update(score, (rng.random(4000) < score * 0.2).astype(float), rng.integers(0, 50, 4000))
    out = binary.compute(True)
    assert out["positives"] == pytest.approx(out["mean_label"] * out["count"])
    for metric in ("auc", "gauc"):
        assert out[f"{metric}_ci_low"] < out[metric] < out[f"{metric}_ci_high"]
        assert out[f"{metric}_ci_high"] - out[f"{metric}_ci_low"] < 0.2
