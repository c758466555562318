"""Generate the synthetic e-commerce log (raw JSON Lines) and its ground truth.

    python -m jobs.generate_logs --config cluster_configs/local.yaml \
        [--set generator.num_users=100 ...] [--out DIR] [--truth-out DIR] [--overwrite]

Also runs as a plain script (``spark-submit jobs/generate_logs.py ...``). Raw logs
go to ``--out`` (default ``lake.raw_root``), ground truth to ``--truth-out``
(default ``generator.truth_root``); the feature jobs never read the latter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.config import load_pipeline_config
from mtlrec.config import add_config_arguments
from mtlrec.errors import run_job
from mtlrec.synthetic.generate import generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="generate_logs",
        description="Write the synthetic e-commerce event log (with dirt) and its ground truth.",
    )
    add_config_arguments(parser)
    parser.add_argument("--out", help="raw log root (default: lake.raw_root from the config)")
    parser.add_argument(
        "--truth-out", help="ground truth root (default: generator.truth_root from the config)"
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier run's events/items/users and truth files at these roots",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        config = load_pipeline_config(args)
        raw_root = Path(args.out or config.lake.raw_root)
        truth_root = Path(args.truth_out or config.generator.truth_root)
        summary = generate(config.generator, raw_root, truth_root, overwrite=args.overwrite)
        print(
            f"generate_logs: wrote {summary.total_lines:,} lines "
            f"({summary.truth_impressions:,} true impressions) in {summary.seconds:.1f}s "
            f"= {summary.lines_per_second:,.0f} lines/s; raw logs: {summary.raw_root}, "
            f"ground truth: {summary.truth_root}"
        )

    return run_job("generate_logs", body)


if __name__ == "__main__":
    sys.exit(main())
