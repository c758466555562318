"""Does batch scoring keep a model's calibration? (issue 15 point 3, rerunnable on any lake)

    .venv/bin/python -m benchmarks.scoring_calibration --model runs/demo/model.pt
    .venv/bin/python -m benchmarks.scoring_calibration --model runs/demo/model.pt \\
        --set score.context.page=home --set score.context.position=1   # a fixed slot

Takes the logged impressions of a test day of the model's gold build (default: its first
test day) and, per binary task, prints the mean predicted probability

- through the gold/examples path: the rows training's code wrote, each impression in its
  own logged context;
- through the scoring path: the same (user, item) pairs' features built by
  ``feature_engineering.scoring.scoring_features`` as of that day, in the slot context
  ``score.context`` gives (the configured one; the default is unknown for a model
  trained with ``model.context_dropout``, else drawn from each user's logged impressions);

against the observed rate. Acceptance (issue 15): the scoring path within 10 % of the
gold path and within 15 % of the observed rate. Run it after ``make demo`` (or any
``jobs.train`` run); it reads, never writes.
"""

from __future__ import annotations

import argparse

import pandas as pd
from pyspark import StorageLevel

from feature_engineering.scoring import history_events, plan_scoring, scoring_features
from jobs.config import load_pipeline_config
from mtl_model.architectures import MultiTaskModel
from mtl_model.artifact import load_artifact
from mtl_model.scoring import feature_columns, predict_frame
from mtl_model.streaming import BatchColumns
from mtlrec.config import add_config_arguments
from mtlrec.lake import Lake
from mtlrec.spark import get_spark
from mtlrec.tables import GOLD_EXAMPLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scoring_calibration", description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, help="model artifact (model.pt of a run)")
    parser.add_argument("--date", help="test day to score (default: the build's first)")
    args = parser.parse_args(argv)
    cfg = load_pipeline_config(args)
    lake = Lake.from_config(cfg.lake)
    artifact = load_artifact(args.model)
    day = args.date or artifact.spec.test_days[0]
    plan = plan_scoring(cfg.score, cfg.features.gold, lake, args.model, day)
    columns = feature_columns(plan.spec)
    labels = {t.name: t.label_column for t in plan.spec.tasks if t.type == "binary"}
    logged = lake.read_arrow(
        GOLD_EXAMPLES,
        plan.build.versions[GOLD_EXAMPLES],
        filters=[("dt", "=", day)],
        columns=["user_id", "item_id", *columns.names(), *labels.values()],
    ).to_pandas()
    if logged.empty:
        raise SystemExit(f"scoring_calibration: {GOLD_EXAMPLES} holds no rows of {day}")
    spark = get_spark(cfg.spark, cfg.lake)
    history = history_events(spark, lake, cfg.score, cfg.features.gold, day).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    pairs = spark.createDataFrame(
        logged[["user_id", "item_id"]].drop_duplicates(), "user_id string, item_id string"
    )
    users = pairs.select("user_id").distinct()
    features = scoring_features(
        spark, lake, cfg.score, cfg.features.gold, plan, pairs, users, history
    ).toPandas()
    history.unpersist()
    scored = logged[["user_id", "item_id"]].merge(features, on=["user_id", "item_id"])
    if len(scored) != len(logged):
        raise SystemExit(f"scoring_calibration: {len(scored)} of {len(logged)} pairs scored")
    model = artifact.build()
    gold_path = _predict(model, logged, columns)
    scoring_path = _predict(model, scored, columns)
    print(
        f"{len(logged):,} logged impressions of {day} ({logged['user_id'].nunique():,} users); "
        f"score.context {cfg.score.context.model_dump()}"
    )
    print("| task | positives | observed | gold/examples path | scoring path | "
          "scoring / gold | scoring / observed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for task, label in labels.items():
        observed = float(logged[label].mean())
        want = float(gold_path[f"score_{task}"].mean())
        got = float(scoring_path[f"score_{task}"].mean())
        print(
            f"| {task} | {int(logged[label].sum()):,} | {observed:.4f} | {want:.4f} | "
            f"{got:.4f} | {got / want:.3f} | {got / observed:.3f} |"
        )
    return 0


def _predict(model: MultiTaskModel, frame: pd.DataFrame, columns: BatchColumns) -> pd.DataFrame:
    step = 8192
    return pd.concat(
        [
            predict_frame(model, frame.iloc[i : i + step], columns)
            for i in range(0, len(frame), step)
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
