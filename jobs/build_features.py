"""Build the feature tables: bronze, silver and gold, one stage or all.

    scripts/submit.sh jobs/build_features.py --stage bronze --config cluster_configs/local.yaml
    python -m jobs.build_features --stage all --days 2026-10-01 2026-10-02

Re-running a stage for the same days replaces exactly those days' partitions.
With ``--stage all``, gold's day split is checked before each write that could be
wasted: up front against every day the bronze event window allows (nothing written,
exit 2), and again after bronze against the event days bronze found (exit 1, silver
and gold not run). The second check is needed because event days are the lines'
timestamps: with ``features.bronze.window: from_data`` (or late arrivals inside the
tolerance) they are known only once bronze has parsed every line.
Every table commit carries ``<run-id>:<table>``; a retried run with the same
``--run-id`` skips the commits it already made. Exit status: 0 on success,
2 for bad configuration or missing input (nothing written), 1 when a run-time
check fails (e.g. bronze reconciliation) or a stage runs out of memory (one line
naming the stage and the settings to raise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from pathlib import Path

# spark-submit runs this file as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_engineering.bronze import run_bronze, run_window
from feature_engineering.raw_input import list_raw
from feature_engineering.silver import bronze_days, run_silver
from feature_engineering.splits import SplitError, plan_splits
from jobs.config import PipelineConfig, load_pipeline_config
from mtlrec.config import add_config_arguments, iso_day
from mtlrec.errors import CheckError, run_job
from mtlrec.lake import Lake
from mtlrec.log import get_logger
from mtlrec.spark import get_spark, memory_failures_named
from mtlrec.tables import BRONZE_EVENTS, SILVER_EVENTS

STAGES = ("bronze", "silver", "gold", "all")
_log = get_logger("build_features")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_features",
        description="Build bronze/silver/gold feature tables from the raw logs (DESIGN.md 4).",
    )
    parser.add_argument(
        "--stage", choices=STAGES, default="all", help="stage to run (default: all, in order)"
    )
    parser.add_argument(
        "--days",
        nargs="+",
        type=iso_day,
        metavar="YYYY-MM-DD",
        help="only these days (bronze: ingest days; silver: event days); default: all",
    )
    parser.add_argument(
        "--run-id",
        help="id recorded with every commit; reuse it to retry a failed run idempotently "
        "(default: a new id)",
    )
    add_config_arguments(parser)
    return parser


class GoldDaysError(CheckError, RuntimeError):
    """Bronze was written, but its event days cannot give gold's train/val/test split."""


def _lake_days(lake: Lake) -> set[str]:
    """Event days bronze and silver already hold: silver may keep days bronze lost."""
    found = set(bronze_days(lake)) if lake.exists(BRONZE_EVENTS) else set()
    if lake.exists(SILVER_EVENTS):
        found |= {str(p["dt"]) for p in lake.snapshot_partitions(SILVER_EVENTS) if p.get("dt")}
    return found


def check_gold_days_up_front(lake: Lake, cfg: PipelineConfig, days: list[str] | None) -> None:
    """Exit 2 before anything is written when even every day of the bronze event window
    (plus what the lake holds) cannot be split; nothing to check with ``from_data``."""
    mapping = cfg.features.raw_mapping
    listing = list_raw(cfg.lake.raw_root, mapping.events_dir, mapping.file_glob, days)
    window = run_window(listing.days, cfg.features.bronze)
    if window is None:
        return
    span = (window[1] - window[0]).days
    possible = {(window[0] + dt.timedelta(days=i)).isoformat() for i in range(span)}
    try:
        plan_splits(sorted(possible | _lake_days(lake)), cfg.features.gold.splits)
    except SplitError as exc:
        raise SplitError(
            f"gold cannot split even every day of the bronze event window "
            f"[{window[0]}, {window[1]}): {exc}; nothing was written"
        ) from None


def check_gold_days_after_bronze(lake: Lake, cfg: PipelineConfig) -> None:
    try:
        plan_splits(sorted(_lake_days(lake)), cfg.features.gold.splits)
    except SplitError as exc:
        raise GoldDaysError(
            f"gold cannot split the event days bronze holds: {exc}; bronze was written, "
            "silver and gold were not run"
        ) from None


def run_stages(stage: str, cfg: PipelineConfig, days: list[str] | None, run_id: str) -> None:
    lake = Lake.from_config(cfg.lake)
    lake.check_writable()
    if stage == "all":
        check_gold_days_up_front(lake, cfg, days)
    spark = get_spark(cfg.spark, cfg.lake)
    raw_root = cfg.lake.raw_root
    if stage in ("bronze", "all"):
        with memory_failures_named("bronze", cfg.spark):
            run_bronze(spark, lake, raw_root, cfg.features, days, run_id)
    if stage == "all":
        check_gold_days_after_bronze(lake, cfg)
    if stage in ("silver", "all"):
        with memory_failures_named("silver", cfg.spark):
            run_silver(spark, lake, raw_root, cfg.features, days, run_id)
    if stage in ("gold", "all"):
        from feature_engineering.gold import build_gold  # the gold stage lives in its own module

        with memory_failures_named("gold", cfg.spark):
            build_gold(spark, lake, cfg.features.gold)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_id = (
        args.run_id or f"features-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    )

    def body() -> None:
        cfg = load_pipeline_config(args)
        days = args.days or "all"
        _log.info("run %s: stage=%s days=%s config=%s", run_id, args.stage, days, args.config)
        run_stages(args.stage, cfg, args.days, run_id)

    return run_job("build_features", body)


if __name__ == "__main__":
    sys.exit(main())
