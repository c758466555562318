"""Build the feature tables: bronze, silver and gold, one stage or all.

    spark-submit jobs/build_features.py --stage bronze --config cluster_configs/local.yaml
    python -m jobs.build_features --stage all --days 2026-10-01 2026-10-02

Re-running a stage for the same days replaces exactly those days' partitions.
Every table commit carries ``<run-id>:<table>``; a retried run with the same
``--run-id`` skips the commits it already made. Exit status: 0 on success,
2 for bad configuration or missing input (nothing written), 1 when a run-time
check fails (e.g. bronze reconciliation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from pathlib import Path

# spark-submit runs this file as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_engineering.bronze import run_bronze
from feature_engineering.silver import run_silver
from jobs.config import PipelineConfig, load_pipeline_config
from mtlrec.config import add_config_arguments, iso_day
from mtlrec.errors import run_job
from mtlrec.lake import Lake
from mtlrec.log import get_logger
from mtlrec.spark import get_spark

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


def run_stages(stage: str, cfg: PipelineConfig, days: list[str] | None, run_id: str) -> None:
    lake = Lake.from_config(cfg.lake)
    lake.check_writable()
    spark = get_spark(cfg.spark, cfg.lake)
    raw_root = cfg.lake.raw_root
    if stage in ("bronze", "all"):
        run_bronze(spark, lake, raw_root, cfg.features, days, run_id)
    if stage in ("silver", "all"):
        run_silver(spark, lake, raw_root, cfg.features, days, run_id)
    if stage in ("gold", "all"):
        from feature_engineering.gold import build_gold  # the gold stage lives in its own module

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
