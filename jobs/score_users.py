"""Batch scoring: top-K recommendations per user with per-task scores, to Delta.

    scripts/submit.sh jobs/score_users.py --model runs/demo/model.pt
    python -m jobs.score_users --model runs/demo/model.pt --date 2026-10-14 --users users.txt

For the scoring day D (``--date``, default the day after the last silver/events day):

1. users: those with a silver event in the ``score.active_days`` days before D, or the
   ``--users`` file (one user_id per line; blank lines and ``#`` comments skipped);
2. candidates: ``score.candidates.per_user`` items per user by the rule in
   ``feature_engineering.candidates`` (recently viewed, popular in the user's top
   categories, globally popular), from events before D only;
3. features as of D (point in time), built per user and per item and joined to the pairs,
   in the slot context of ``score.context`` (``feature_engineering.scoring``);
4. scores: the model inside ``mapInArrow``; each Spark Python worker loads the broadcast
   artifact once (cached by model version), scores batches of ``score.batch_size`` rows
   with ``score.torch_threads`` torch threads;
5. ``final_score`` by ``score.final_score`` (default: expected value = p(purchase) x price,
   see ``mtl_model.scoring_config.FinalScoreConfig``), rank, keep ``score.top_k``;
6. write ``score.table`` (default gold/recommendations), partitioned by (scored_dt,
   model_version): a re-run replaces exactly its partition.

model_version is ``score.model_version`` or the first 12 hex digits of the artifact's
sha256. The model must fit the lake: scoring uses the gold build the model was trained on
(its vocabulary version), or another build only when its vocabulary is identical.

Exit status (``mtlrec.errors``): 0 on success; 2 for bad configuration or input, one
line, nothing written (a bad table name, a day without history, a file that is not a
model, a model from another gold build, a final score the data cannot compute); 1 when
the written partition fails its check (a user without top_k ranks, or whose final
scores are all equal). The last line printed names the table and partition written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# spark-submit runs this file as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_engineering.scoring import (
    PARTITION_COLUMNS,
    ScoringInputError,
    history_events,
    plan_scoring,
    recommend,
    users_to_score,
    verify_partition,
)
from jobs.config import job_config
from mtlrec.config import add_config_arguments, iso_day
from mtlrec.errors import run_job
from mtlrec.lake import Lake
from mtlrec.log import get_logger, log_stage
from mtlrec.spark import get_spark, memory_failures_named

_log = get_logger("score_users")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="score_users",
        description="Score users' candidate items with a trained model and write the top-K "
        "recommendations to a Delta table (default gold/recommendations).",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--model", required=True, metavar="PATH", help="model artifact (model.pt of a run)"
    )
    parser.add_argument(
        "--date",
        type=iso_day,
        metavar="YYYY-MM-DD",
        help="scoring day: features and candidates use events before it "
        "(default: the day after the last silver/events day)",
    )
    parser.add_argument(
        "--users",
        metavar="FILE",
        help="score these users (one user_id per line) instead of those active in the "
        "score.active_days days before the scoring day",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_job("score_users", lambda: score(args))


def score(args: argparse.Namespace) -> None:
    cfg = job_config(args, "score_users")
    started = time.monotonic()
    lake = Lake.from_config(cfg.lake)
    plan = plan_scoring(cfg.score, cfg.features.gold, lake, args.model, args.date)
    _log.info(
        "scoring day %s with %s (model_version %s, gold build %s)",
        plan.day, args.model, plan.model_version, plan.build.ref.build_id,
    )  # fmt: skip
    lake.check_writable()
    # An executor (or, on local[*], the driver) out of memory ends in one line naming the
    # setting to raise, as the feature job's stages do.
    with memory_failures_named("scoring", cfg.spark):
        spark = get_spark(cfg.spark, cfg.lake)
        users = users_to_score(spark, lake, plan.day, cfg.score.active_days, args.users).persist()
        # Not persisted: each step reads the Parquet columns it needs again. On 1M pairs of a
        # 1M-line lake the job took 66 s with history cached (MEMORY_AND_DISK) and 57-63 s
        # without, and the cache held the whole look-back window in the heap.
        history = history_events(spark, lake, cfg.score, cfg.features.gold, plan.day)
        try:
            user_count = users.count()
            if user_count == 0:
                raise ScoringInputError(
                    f"no users to score for {plan.day}: the --users file is empty, or no user "
                    f"was active in the {cfg.score.active_days} days before it"
                )
            _log.info("%d users to score", user_count)
            result = lake.write_table(
                recommend(spark, lake, cfg.score, cfg.features.gold, plan, users, history),
                plan.table,
                mode="overwrite",
                partition_by=PARTITION_COLUMNS,
                replace_partitions="written",
            )
            rows = verify_partition(spark, lake, plan, user_count, cfg.score.top_k)
        finally:
            users.unpersist()
    log_stage(
        _log,
        "score",
        day=plan.day,
        model_version=plan.model_version,
        users=user_count,
        rows=rows,
        table_version=result.version,
        seconds=time.monotonic() - started,
    )
    print(
        f"score_users: wrote {rows} recommendations for {user_count} users to "
        f"{lake.table_uri(plan.table)} (scored_dt={plan.day}, "
        f"model_version={plan.model_version})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
