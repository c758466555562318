"""The offline evaluation report: HTML with PNG plots, a markdown summary and report.json.

    python -m jobs.report --config cluster_configs/local.yaml --run runs/demo \\
        [--run runs/single-task-baseline] [--out DIR] [--truth DIR]

For every run (``--run``, repeatable): per-task test AUC, GAUC, logloss and
calibration (mean prediction / mean label) exactly as its metrics.json records them, each
AUC/GAUC with the evidence behind it (positives and rows of the split, the bootstrap 95 %
interval metrics.json records, and a warning below ``MIN_POSITIVES`` positives);
the comparison with a single-task baseline (a run whose config.json says
``single_task``); the oracle's AUC from the generator's ground truth when it exists
(``--truth``, default ``generator.truth_root``) and each AUC's share of the oracle's
lift over 0.5; training curves; calibration plots on the test split; and the quality
of the recommendations scored for each test day (``jobs/score_users.py --date DAY``):
Recall@K and NDCG@K of that day's purchases, catalogue coverage, popularity bias.

Writes into ``--out`` (default ``<first run>/report/``): report.html, summary.md,
report.json (strict JSON: an undefined figure is null), curves.png, calibration_<run>.png.
The last line printed names them.
"""

from __future__ import annotations

import argparse
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.config import PipelineConfig, load_pipeline_config
from mtl_model.metrics import MIN_POSITIVES, strict_json
from mtl_model.offline_eval import (
    OracleMetrics,
    RunSummary,
    calibration_bins,
    lift_share,
    model_predictions,
    oracle_metrics,
    recommendation_quality,
)
from mtlrec.config import add_config_arguments
from mtlrec.errors import run_job
from mtlrec.lake import Lake

BINARY_METRICS = ("auc", "gauc", "logloss", "calibration")
REGRESSION_METRICS = ("rmse", "calibration")
BINARY_HEADER = [
    "task", "AUC", "AUC 95% CI", "GAUC", "GAUC 95% CI", "positives", "rows", "logloss",
    "calibration", "AUC - baseline", "oracle AUC", "share of oracle lift",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="report",
        description="Offline evaluation report of trained runs: per-task metrics vs the "
        "single-task baseline and the ground-truth oracle, curves, calibration, and "
        "recommendation quality on the test day.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--run",
        dest="runs",
        action="append",
        required=True,
        metavar="DIR",
        help="a training run directory (model.pt, metrics.json, config.json); repeatable",
    )
    parser.add_argument("--out", metavar="DIR", help="output directory (default: <run>/report)")
    parser.add_argument(
        "--truth",
        metavar="DIR",
        help="generator ground truth root (default: generator.truth_root); the oracle "
        "section is left out when it does not exist",
    )
    return parser


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4f}"


def interval(values: dict[str, float], metric: str) -> str:
    """``[low, high]`` of the bootstrap interval metrics.json records, or '–'."""
    low, high = values.get(f"{metric}_ci_low"), values.get(f"{metric}_ci_high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    return f"[{low:.4f}, {high:.4f}]"


def count(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else str(int(value))


def evidence_warnings(run: RunSummary) -> list[str]:
    """One line per binary task whose test split has fewer than ``MIN_POSITIVES`` positives."""
    out = []
    metrics = run.task_metrics("test")
    for task in run.spec.tasks:
        positives = metrics[task.name].get("positives")
        if task.type == "binary" and positives is not None and positives < MIN_POSITIVES:
            out.append(
                f"{run.name}: {task.name} has only {int(positives)} positives in the test split "
                f"(< {MIN_POSITIVES}): its AUC and GAUC are thin evidence, see the intervals"
            )
    return out


@dataclass
class Table:
    """A table rendered both as markdown and as HTML."""

    title: str
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        return f"<h3>{html.escape(self.title)}</h3><table><tr>{head}</tr>{body}</table>"


def build_report(cfg: PipelineConfig, run_dirs: list[Path], out: Path, truth: Path) -> Path:
    """Compute, plot and render the report; returns the HTML file."""
    lake = Lake.from_config(cfg.lake)
    runs = [RunSummary.load(d, cfg.score.model_version) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    baseline = next((r for r in runs if r.is_baseline), None)
    oracles = (
        {r.name: oracle_metrics(lake, r, truth) for r in runs}
        if (truth / "impressions").is_dir()
        else {}
    )
    report: dict[str, Any] = {"runs": {}, "baseline": baseline.name if baseline else None}
    tables: list[Table] = []
    for run in runs:
        oracle = oracles.get(run.name)
        report["runs"][run.name] = {
            "architecture": run.architecture,
            "model_version": run.model_version,
            "best_epoch": run.best_epoch,
            "test": run.task_metrics("test"),
            "oracle": oracle.__dict__ if oracle is not None else None,
            "warnings": evidence_warnings(run),
        }
        tables += _metric_tables(run, baseline, oracle)

    recs: list[dict[str, Any]] = []
    for run in runs:
        for day in run.spec.test_days:
            quality = recommendation_quality(
                lake, cfg.score.table, day, run.model_version, cfg.score.report.k
            )
            if quality is not None:
                recs.append({"run": run.name, **quality.as_dict()})
    report["recommendations"] = recs
    k = cfg.score.report.k
    rec_table = Table(
        f"Recommendation quality on the test day (K = {k})",
        ["run", "day", "users scored", "purchasers (scored)", f"Recall@{k}", f"NDCG@{k}",
         f"popular Recall@{k}", f"popular NDCG@{k}", "coverage", "popularity pct", "top-10% share"],
        [
            [q["run"], q["day"], str(q["users_scored"]),
             f"{q['purchasers']} ({q['purchasers_scored']})",
             *[fmt(q[key]) for key in ("recall_at_k", "ndcg_at_k", "popular_recall_at_k",
                                       "popular_ndcg_at_k", "catalogue_coverage",
                                       "mean_popularity_percentile", "top_decile_share")]]
            for q in recs
        ],
    )  # fmt: skip
    plots = _plots(cfg, lake, runs, out)
    missing_recs = [
        f"`jobs/score_users.py --model {r.directory / 'model.pt'} --date {d}`"
        for r in runs
        for d in r.spec.test_days
        if not any(q["run"] == r.name and q["day"] == d for q in recs)
    ]
    warnings = [w for r in runs for w in evidence_warnings(r)]
    (out / "report.json").write_text(strict_json(report, indent=2, sort_keys=True, default=str))
    _write_markdown(out, tables, rec_table, missing_recs, oracles, truth, warnings)
    return _write_html(out, tables, rec_table, missing_recs, plots, warnings)


def _metric_tables(
    run: RunSummary, baseline: RunSummary | None, oracle: OracleMetrics | None
) -> list[Table]:
    """The run's test metrics as recorded, next to the baseline's and the oracle's."""
    metrics = run.task_metrics("test")
    base = baseline.task_metrics("test") if baseline is not None and baseline is not run else {}
    oracle_tasks = oracle.tasks if oracle is not None else {}
    binary, regression = [], []
    for task in run.spec.tasks:
        values = metrics[task.name]
        if task.type == "binary":
            auc = values.get("auc", math.nan)
            oracle_auc = oracle_tasks.get(task.name, {}).get("auc", math.nan)
            binary.append(
                [task.name, fmt(auc), interval(values, "auc"), fmt(values.get("gauc")),
                 interval(values, "gauc"), count(values.get("positives")),
                 count(values.get("count")), fmt(values.get("logloss")),
                 fmt(values.get("calibration")),
                 fmt(auc - base.get(task.name, {}).get("auc", math.nan)),
                 fmt(oracle_auc), fmt(lift_share(auc, oracle_auc))]
            )  # fmt: skip
        else:
            regression.append(
                [task.name, *[fmt(values.get(m)) for m in REGRESSION_METRICS],
                 fmt(oracle_tasks.get(task.name, {}).get("rmse"))]
            )  # fmt: skip
    title = f"{run.name} ({run.architecture}, model_version {run.model_version}), test split"
    tables = [Table(title, BINARY_HEADER, binary)]
    if regression:
        tables.append(
            Table(
                f"{title}: regression", ["task", "RMSE", "calibration", "oracle RMSE"], regression
            )
        )
    return tables


def _plots(cfg: PipelineConfig, lake: Lake, runs: list[RunSummary], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    figure, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(12, 4))
    for run in runs:
        epochs = [r["epoch"] for r in run.history]
        loss_ax.plot(epochs, [r.get("train/loss", math.nan) for r in run.history],
                     marker="o", label=run.name)  # fmt: skip
        for task in run.spec.tasks:
            key = f"val/{task.name}/auc"
            if task.type == "binary" and key in run.history[0]:
                auc_ax.plot(epochs, [r[key] for r in run.history], marker="o",
                            label=f"{run.name} {task.name}")  # fmt: skip
    loss_ax.set(title="training loss", xlabel="epoch")
    auc_ax.set(title="validation AUC", xlabel="epoch")
    loss_ax.legend(fontsize=7)
    auc_ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=100)
    plt.close(figure)
    files.append("curves.png")

    report_cfg = cfg.score.report
    for run in runs:
        labels, scores = model_predictions(
            lake, run, report_cfg.calibration_max_rows, report_cfg.batch_size
        )
        binary = [t for t in run.spec.tasks if t.type == "binary"]
        figure, axes = plt.subplots(1, len(binary), figsize=(4 * len(binary), 4), squeeze=False)
        for ax, task in zip(axes[0], binary, strict=True):
            predicted = scores[f"score_{task.name}"].to_numpy()
            observed = labels[task.label_column].to_numpy()
            mean_pred, mean_label = calibration_bins(
                predicted, observed, report_cfg.calibration_bins
            )
            top = max(float(mean_pred.max(initial=0)), float(mean_label.max(initial=0)), 1e-6)
            ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
            ax.plot(mean_pred, mean_label, marker="o")
            ax.set(title=task.name, xlabel="mean prediction", ylabel="observed rate")
        figure.suptitle(f"{run.name}: calibration on the test split")
        figure.tight_layout()
        name = f"calibration_{run.name}.png"
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
        files.append(name)
    return files


def _write_markdown(
    out: Path,
    tables: list[Table],
    rec_table: Table,
    missing_recs: list[str],
    oracles: dict[str, OracleMetrics],
    truth: Path,
    warnings: list[str],
) -> None:
    parts = ["# Offline evaluation", ""]
    parts += [f"> **Warning**: {w}" for w in warnings] + ([""] if warnings else [])
    if not oracles:
        parts += [f"No ground truth under {truth}: the oracle columns are empty.", ""]
    for name, oracle in oracles.items():
        parts.append(
            f"Oracle for {name}: test days {', '.join(oracle.days)}, "
            f"{oracle.matched_rows} of {oracle.test_rows} test impressions matched to truth."
        )
    parts += ["", *[t.markdown() for t in tables], rec_table.markdown()]
    if missing_recs:
        parts += ["No recommendations yet for: " + "; ".join(missing_recs), ""]
    (out / "summary.md").write_text("\n".join(parts))


def _write_html(
    out: Path,
    tables: list[Table],
    rec_table: Table,
    missing_recs: list[str],
    plots: list[str],
    warnings: list[str],
) -> Path:
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    )
    body = ["<h1>Offline evaluation</h1>"]
    body += [f'<p class="warning"><b>Warning</b>: {html.escape(w)}</p>' for w in warnings]
    body += [*[t.html() for t in tables], rec_table.html()]
    if missing_recs:
        body.append("<p>No recommendations yet for: " + html.escape("; ".join(missing_recs)))
    body += [f'<h3>{html.escape(p)}</h3><img src="{html.escape(p)}">' for p in plots]
    page = out / "report.html"
    page.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>mtlrec report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    return page


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        cfg = load_pipeline_config(args)
        run_dirs = [Path(r) for r in args.runs]
        out = Path(args.out) if args.out else run_dirs[0] / "report"
        truth = Path(args.truth or cfg.generator.truth_root)
        page = build_report(cfg, run_dirs, out, truth)
        print(f"report: {page} (summary: {out / 'summary.md'}, numbers: {out / 'report.json'})")

    return run_job("report", body)


if __name__ == "__main__":
    raise SystemExit(main())
