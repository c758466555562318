"""Batch scoring: top-K recommendations per user with per-task scores, to Delta.

    spark-submit jobs/score_users.py --config cluster_configs/local.yaml --model runs/demo/model.pt
    python -m jobs.score_users --model runs/demo/model.pt --date 2026-10-14 --users users.txt

For the scoring day D (``--date``, default the day after the last silver/events day):

1. users: those with a silver event in the ``score.active_days`` days before D, or the
   ``--users`` file (one user_id per line; blank lines and ``#`` comments skipped);
2. candidates: ``score.candidates.per_user`` items per user by the rule in
   ``feature_engineering.candidates`` (recently viewed, popular in the user's top
   categories, globally popular), from events before D only;
3. features: ``feature_engineering.gold.build_examples_for`` as of D — the training code
   path, point in time — with the slot context of ``score.context``;
4. scores: the model inside ``mapInPandas``; each Spark Python worker loads the broadcast
   artifact once (cached by model version), scores batches of ``score.batch_size`` rows
   with ``score.torch_threads`` torch threads;
5. ``final_score`` by ``score.final_score`` (default: expected value = p(purchase) x price,
   see ``mtl_model.scoring_config.FinalScoreConfig``), rank, keep ``score.top_k``;
6. write ``score.table`` (default gold/recommendations), partitioned by (scored_dt,
   model_version): a re-run replaces exactly its partition.

model_version is ``score.model_version`` or the first 12 hex digits of the artifact's
sha256. Exit status: 0 on success, 2 for bad configuration or input (nothing written),
1 when the written partition fails its check. The last line printed names the table
and partition written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# spark-submit runs this file as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from feature_engineering.candidates import (
    CandidateError,
    candidates,
    days_before,
    eligible_items,
    popular_items,
)
from feature_engineering.gold import build_examples_for
from jobs.config import PipelineConfig, job_config
from mtl_model.scoring import (
    FrameScorer,
    artifact_from_bytes,
    feature_columns,
    model_version_of,
    score_columns,
)
from mtl_model.scoring_config import FinalScoreConfig, SlotContext
from mtlrec.config import add_config_arguments, iso_day
from mtlrec.errors import CheckError, InputError
from mtlrec.feature_spec import FeatureSpec
from mtlrec.lake import Lake, LakeError, validate_table_name
from mtlrec.log import get_logger, log_stage
from mtlrec.spark import JavaNotFoundError, get_spark

EVENTS_TABLE = "silver/events"
ITEMS_TABLE = "silver/items"
USERS_TABLE = "silver/users"
PARTITION_COLUMNS = ["scored_dt", "model_version"]
_log = get_logger("score_users")


class ScoringInputError(InputError, ValueError):
    """Input the job cannot score from; nothing was written."""


class PartitionCheckError(CheckError, RuntimeError):
    """The written partition does not hold top_k ranked rows per scored user."""


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


@dataclass(frozen=True)
class ScoringPlan:
    """The validated inputs of one scoring run."""

    table: str
    payload: bytes
    spec: FeatureSpec
    model_version: str
    day: str
    scored_at: dt.datetime


def read_model_bytes(path: str, lake: Lake) -> bytes:
    if "://" not in path:
        local = Path(path)
        if not local.is_file():
            raise ScoringInputError(f"--model {path}: no such file")
        return local.read_bytes()
    filesystem, inner = lake.storage.filesystem_for(path)
    with filesystem.open_input_file(inner) as handle:
        return bytes(handle.read())


def default_day(lake: Lake) -> str:
    """The day after the last silver/events day."""
    if not lake.exists(EVENTS_TABLE):
        raise ScoringInputError(
            f"{EVENTS_TABLE} does not exist under {lake.root}: run jobs/build_features.py first"
        )
    days = [str(p["dt"]) for p in lake.snapshot_partitions(EVENTS_TABLE) if p.get("dt")]
    if not days:
        raise ScoringInputError(f"{EVENTS_TABLE} holds no days under {lake.root}")
    return (dt.date.fromisoformat(max(days)) + dt.timedelta(days=1)).isoformat()


def check_tasks(spec: FeatureSpec, cfg: FinalScoreConfig) -> None:
    names = [t.name for t in spec.tasks]
    unknown = [t for t in cfg.tasks_used() if t not in names]
    if unknown:
        raise ScoringInputError(
            f"score.final_score names tasks {unknown}; the model's tasks are {names}"
        )


def plan_run(cfg: PipelineConfig, lake: Lake, model: str, day: str | None) -> ScoringPlan:
    """Everything checkable before Spark starts; raises ``ScoringInputError``."""
    try:
        table = validate_table_name(cfg.score.table)
    except ValueError as exc:
        raise ScoringInputError(f"score.table: {exc}") from None
    payload = read_model_bytes(model, lake)
    try:
        spec = artifact_from_bytes(payload).spec
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ScoringInputError(f"--model {model}: not a readable model artifact: {exc}") from None
    check_tasks(spec, cfg.score.final_score)
    return ScoringPlan(
        table=table,
        payload=payload,
        spec=spec,
        model_version=cfg.score.model_version or model_version_of(payload),
        day=day or default_day(lake),
        scored_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
    )


def users_to_score(
    spark: SparkSession, lake: Lake, day: str, active_days: int, users_file: str | None
) -> DataFrame:
    """One ``user_id`` per row: the ``users_file`` list, or the users active before ``day``."""
    if users_file is None:
        events = lake.read_table(
            spark, EVENTS_TABLE, filters=[("dt", "in", days_before(day, active_days))]
        )
        return events.select("user_id").where(F.col("user_id").isNotNull()).distinct()
    if "://" not in users_file and not Path(users_file).is_file():
        raise ScoringInputError(f"--users {users_file}: no such file")
    lines = spark.read.text(users_file).select(F.trim("value").alias("user_id"))
    return lines.where((F.col("user_id") != "") & ~F.col("user_id").startswith("#")).distinct()


def slot_pairs(
    candidate_pairs: DataFrame, users: DataFrame, context: SlotContext, day: str
) -> DataFrame:
    """Candidate pairs with the slot context and the user's market (silver/users region,
    which is how silver derives an event's market)."""
    event_ts = (
        F.lit(f"{day} {context.hour_utc:02d}:00:00").cast("timestamp")
        if context.hour_utc is not None
        else F.lit(None).cast("timestamp")
    )
    markets = users.select("user_id", F.col("region").alias("market"))
    return candidate_pairs.join(markets, "user_id", "left").select(
        "user_id",
        "item_id",
        F.lit(context.page).cast("string").alias("page"),
        F.lit(context.device).cast("string").alias("device"),
        F.lit(context.position).cast("int").alias("position"),
        event_ts.alias("event_ts"),
        "market",
    )


def final_score_column(cfg: FinalScoreConfig) -> Column:
    """``score.final_score`` as a column over ``score_<task>`` and ``price``."""
    if cfg.formula == "weighted_sum":
        total = F.lit(0.0)
        for task, weight in sorted(cfg.weights.items()):
            total = total + F.lit(weight) * F.col(f"score_{task}")
        return total
    score = F.col(f"score_{cfg.task}")
    if cfg.formula == "task":
        return score
    # Unknown or negative prices count as 0: such an item has no expected revenue.
    price = F.greatest(F.coalesce(F.col("price"), F.lit(0.0)), F.lit(0.0))
    return score * F.pow(price, F.lit(cfg.price_exponent))


def recommend(
    spark: SparkSession, lake: Lake, cfg: PipelineConfig, plan: ScoringPlan, users: DataFrame
) -> DataFrame:
    """Steps 2-5: candidates, features, model scores, final score, top-K ranks."""
    score_cfg = cfg.score
    history = lake.read_table(
        spark,
        EVENTS_TABLE,
        filters=[("dt", "in", days_before(plan.day, score_cfg.candidates.history_days))],
    )
    items = lake.read_table(spark, ITEMS_TABLE)
    ranked_items = eligible_items(items, history, plan.day, score_cfg.candidates)
    popular = popular_items(ranked_items, score_cfg.candidates)
    pairs = slot_pairs(
        candidates(users, history, ranked_items, popular, score_cfg.candidates),
        lake.read_table(spark, USERS_TABLE),
        score_cfg.context,
        plan.day,
    )
    features = build_examples_for(spark, lake, cfg.features.gold, pairs, plan.day)
    columns = feature_columns(plan.spec)
    scorer = FrameScorer(
        version=plan.model_version,
        payload=spark.sparkContext.broadcast(plan.payload),
        columns=columns,
        id_columns=("user_id", "item_id"),
        batch_size=score_cfg.batch_size,
        torch_threads=score_cfg.torch_threads,
    )
    score_names = score_columns(plan.spec)
    schema = T.StructType(
        [T.StructField("user_id", T.StringType()), T.StructField("item_id", T.StringType())]
        + [T.StructField(name, T.DoubleType()) for name in score_names]
    )
    scored = features.select("user_id", "item_id", *columns.names()).mapInPandas(scorer, schema)
    by_user = Window.partitionBy("user_id").orderBy(F.col("final_score").desc(), "item_id")
    return (
        scored.join(items.select("item_id", "price"), "item_id", "left")
        .withColumn("final_score", final_score_column(score_cfg.final_score).cast("double"))
        .withColumn("rank", F.row_number().over(by_user))
        .where(F.col("rank") <= score_cfg.top_k)
        .select(
            "user_id",
            F.col("rank").cast("int").alias("rank"),
            "item_id",
            *score_names,
            "final_score",
            F.lit(plan.scored_at).cast("timestamp").alias("scored_at"),
            F.lit(plan.day).alias("scored_dt"),
            F.lit(plan.model_version).alias("model_version"),
        )
    )


def verify_partition(
    spark: SparkSession, lake: Lake, plan: ScoringPlan, users: int, top_k: int
) -> int:
    """Rows of the written partition; raises unless it is ranks 1..top_k for every user."""
    row = (
        lake.read_table(
            spark,
            plan.table,
            filters=[("scored_dt", "=", plan.day), ("model_version", "=", plan.model_version)],
        )
        .groupBy("user_id")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.countDistinct("rank").alias("ranks"),
            F.min("rank").alias("low"),
            F.max("rank").alias("high"),
        )
        .agg(
            F.count(F.lit(1)).alias("users"),
            F.sum("n").alias("rows"),
            F.sum(
                (
                    (F.col("n") == top_k)
                    & (F.col("ranks") == top_k)
                    & (F.col("low") == 1)
                    & (F.col("high") == top_k)
                ).cast("int")
            ).alias("complete"),
        )
        .first()
    )
    assert row is not None
    if (row["users"], row["complete"]) != (users, users):
        raise PartitionCheckError(
            f"{plan.table} scored_dt={plan.day} model_version={plan.model_version}: "
            f"{row['complete']} of {row['users']} users hold ranks 1..{top_k}; "
            f"{users} users were scored"
        )
    return int(row["rows"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = job_config(args, "score_users")
    started = time.monotonic()
    lake = Lake.from_config(cfg.lake)
    try:
        plan = plan_run(cfg, lake, args.model, args.date)
    except ScoringInputError as exc:
        print(f"score_users: {exc}", file=sys.stderr)
        return 2
    _log.info("scoring day %s with %s (model_version %s)", plan.day, args.model, plan.model_version)
    try:
        lake.check_writable()
        spark = get_spark(cfg.spark, cfg.lake)
    except (JavaNotFoundError, LakeError) as exc:
        print(f"score_users: {exc}", file=sys.stderr)
        return 2
    users = users_to_score(spark, lake, plan.day, cfg.score.active_days, args.users).persist()
    try:
        user_count = users.count()
        if user_count == 0:
            raise ScoringInputError(
                f"no users to score for {plan.day}: the --users file is empty, or no user "
                f"was active in the {cfg.score.active_days} days before it"
            )
        _log.info("%d users to score", user_count)
        result = lake.write_table(
            recommend(spark, lake, cfg, plan, users),
            plan.table,
            mode="overwrite",
            partition_by=PARTITION_COLUMNS,
            replace_partitions="written",
        )
        rows = verify_partition(spark, lake, plan, user_count, cfg.score.top_k)
    except (ScoringInputError, CandidateError) as exc:
        print(f"score_users: {exc}", file=sys.stderr)
        return 2
    except PartitionCheckError as exc:
        print(f"score_users: {exc}", file=sys.stderr)
        return 1
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
