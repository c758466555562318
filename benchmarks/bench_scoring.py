"""Part 5: batch scoring through the Spark job against a plain torch forward pass.

User-item pairs scored per second by ``jobs.score_users`` (in this process, the run's
Spark session) against ``mtl_model.scoring.predict_frame`` — the function the job's
workers call — over the same pairs' feature rows already in memory, with as many torch
threads as Spark has cores x ``score.torch_threads``: the model's own limit here.

The job keeps ``score.top_k = score.candidates.per_user`` so every scored pair is written
and counted (the job itself checks each user holds exactly that many ranked rows). The
model has freshly initialised weights of the configured architecture: throughput does not
depend on the weights.
"""

from __future__ import annotations

import pandas as pd
import pyarrow.compute as pc
import torch

from benchmarks.context import BenchContext
from benchmarks.harness import Figure, PartResult, median, paired_ratio, rates, time_interleaved
from mtlrec.lake import Lake

TITLE = "Scoring: Spark job pairs/s vs an in-memory torch forward pass"


def pick_users(lake: Lake, count: int) -> list[str]:
    """``count`` users with test-day impressions (active before the default scoring day)."""
    table = lake.read_arrow("gold/examples", filters=[("split", "=", "test")],
                            columns=["user_id"])
    users = sorted(set(pc.drop_null(table.column("user_id")).to_pylist()))
    if not users:
        raise ValueError("gold/examples has no test-day users to score")
    return users[:count]


def run(ctx: BenchContext) -> PartResult:
    import jobs.score_users as score_users
    from feature_engineering.gold import build_examples_for
    from feature_engineering.spec import read_latest_spec
    from mtl_model.architectures import build_model
    from mtl_model.artifact import artifact_from_model, load_artifact, save_artifact
    from mtl_model.scoring import feature_columns, predict_frame
    from mtlrec.spark import get_spark

    profile = ctx.profile
    base = ctx.shared_config()
    top_k = [f"score.top_k={base.score.candidates.per_user}"]
    cfg = ctx.shared_config(top_k)
    lake = Lake.from_config(cfg.lake)
    spec = read_latest_spec(lake)
    workdir = ctx.part_dir("scoring")
    torch.manual_seed(0)
    model_path = workdir / "model.pt"
    save_artifact(artifact_from_model(build_model(spec, cfg.model), spec, cfg.model), model_path)
    users = pick_users(lake, profile.scoring_users)
    users_file = workdir / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    day = score_users.default_day(lake)
    spark = get_spark(cfg.spark, cfg.lake)
    argv = [*ctx.job_arguments(top_k), "--model", str(model_path), "--users", str(users_file)]

    def job() -> None:
        ctx.log(f"part 5: jobs.score_users, {len(users)} users x "
                f"{cfg.score.candidates.per_user} candidates")
        code = score_users.main(argv)
        if code != 0:
            raise RuntimeError(f"jobs.score_users exited with {code}")

    columns = feature_columns(spec)
    frames: list[pd.DataFrame] = []
    model = load_artifact(model_path).build()
    threads = spark.sparkContext.defaultParallelism * cfg.score.torch_threads

    def written_pairs() -> pd.DataFrame:
        version = score_users.model_version_of(model_path.read_bytes())
        table = lake.read_arrow(
            cfg.score.table,
            filters=[("scored_dt", "=", day), ("model_version", "=", version)],
            columns=["user_id", "item_id"],
        )
        return table.to_pandas()

    def prepare(side: str) -> None:
        if side != "torch" or frames:
            return
        # The pairs the job scored, with the job's own slot context and feature code path.
        pairs = spark.createDataFrame(written_pairs())
        slots = score_users.slot_pairs(
            pairs, lake.read_table(spark, score_users.USERS_TABLE), cfg.score.context, day
        )
        features = build_examples_for(spark, lake, cfg.features.gold, slots, day)
        frames.append(features.select(*columns.names()).toPandas())

    def forward() -> None:
        frame = frames[0]
        size = cfg.score.batch_size
        for start in range(0, len(frame), size):
            predict_frame(model, frame.iloc[start : start + size], columns)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seconds = time_interleaved({"job": job, "torch": forward}, profile.repeats,
                                   before=prepare)
    finally:
        torch.set_num_threads(previous_threads)
    pairs = len(written_pairs())
    if len(frames[0]) != pairs:
        raise RuntimeError(f"feature rows {len(frames[0])} != scored pairs {pairs}")
    job_rates, torch_rates = rates(pairs, seconds["job"]), rates(pairs, seconds["torch"])
    result = PartResult(key="5", title=TITLE)
    result.figures.append(
        Figure(
            name=f"jobs.score_users, {len(users):,} users",
            value=median(job_rates),
            unit="pairs/s",
            runs=profile.repeats,
            baseline=f"predict_frame in memory, same pairs, {threads} torch threads",
            baseline_value=median(torch_rates),
            ratio=paired_ratio(job_rates, torch_rates),
            note=f"{pairs:,} pairs; job median {median(seconds['job']):.1f} s end to end",
        )
    )
    result.notes += [
        "The job's time is end to end (users, candidates, point-in-time features, scoring in "
        "mapInPandas, ranking, Delta write and its check) in the run's Spark session; the "
        "baseline is only the forward passes, so the ratio is what everything around the "
        "model costs.",
        f"score.top_k = score.candidates.per_user = {base.score.candidates.per_user} so every "
        f"scored pair is written; scoring day {day}; freshly initialised "
        f"{cfg.model.architecture} weights.",
    ]
    return result

