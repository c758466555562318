"""Part 5: batch scoring through the Spark job against a plain torch forward pass.

User-item pairs scored per second by ``jobs.score_users`` (in this process, the run's
Spark session) against ``mtl_model.scoring.predict_frame`` — the function the job's
workers call — over the same pairs' feature rows already in memory, with as many torch
threads as Spark has cores x ``score.torch_threads``: the model's own limit here.

One row per size in ``scoring_users`` (users x ``score.candidates.per_user`` pairs): a
small size shows the fixed costs, a size of >= 1M pairs the cost per pair (DESIGN.md 7:
scoring >= 0.3x the forward pass). Each row also gives the peak RSS of the process tree
during the job (driver JVM, Python workers): it should stay flat as the size grows.

The job keeps ``score.top_k = score.candidates.per_user`` so every scored pair is written
and counted (the job itself checks each user holds exactly that many ranked rows). The
model has freshly initialised weights of the configured architecture, recorded against
the lake's gold build: throughput does not depend on the weights.
"""

from __future__ import annotations

import pandas as pd
import torch

from benchmarks.bench_generator import TreeRssSampler
from benchmarks.context import BenchContext
from benchmarks.harness import Figure, PartResult, median, paired_ratio, rates, time_interleaved
from mtlrec.lake import Lake
from mtlrec.tables import SILVER_USERS

TITLE = "Scoring: Spark job pairs/s vs an in-memory torch forward pass"


def pick_users(lake: Lake, count: int) -> list[str]:
    """The first ``count`` users of silver/users (by id)."""
    users = sorted(
        lake.read_arrow(SILVER_USERS, columns=["user_id"]).column("user_id").to_pylist()
    )
    if len(users) < count:
        raise ValueError(f"{SILVER_USERS} holds {len(users)} users, fewer than {count}")
    return users[:count]


def run(ctx: BenchContext) -> PartResult:
    import jobs.score_users as score_users
    from feature_engineering.scoring import history_events, plan_scoring, scoring_features
    from mtl_model.architectures import build_model
    from mtl_model.artifact import artifact_from_model, load_artifact, save_artifact
    from mtl_model.scoring import feature_columns, model_version_of, predict_frame
    from mtlrec.gold_build import read_build
    from mtlrec.spark import get_spark

    profile = ctx.profile
    base = ctx.shared_config()
    top_k = [f"score.top_k={base.score.candidates.per_user}"]
    cfg = ctx.shared_config(top_k)
    lake = Lake.from_config(cfg.lake)
    build = read_build(lake)
    if build is None:
        raise RuntimeError("the shared dataset has no gold build")
    workdir = ctx.part_dir("scoring")
    torch.manual_seed(0)
    model_path = workdir / "model.pt"
    model_cfg = cfg.model
    save_artifact(
        artifact_from_model(
            build_model(build.spec, model_cfg), build.spec, model_cfg, gold_build=build.ref
        ),
        model_path,
    )
    spark = get_spark(cfg.spark, cfg.lake)
    plan = plan_scoring(cfg.score, cfg.features.gold, lake, str(model_path), None)
    columns = feature_columns(plan.spec)
    model = load_artifact(model_path).build()
    threads = spark.sparkContext.defaultParallelism * cfg.score.torch_threads
    version = model_version_of(model_path.read_bytes())
    result = PartResult(key="5", title=TITLE)

    def written_pairs() -> pd.DataFrame:
        table = lake.read_arrow(
            cfg.score.table,
            filters=[("scored_dt", "=", plan.day), ("model_version", "=", version)],
            columns=["user_id", "item_id"],
        )
        return table.to_pandas()

    for size in profile.scoring_users:
        users = pick_users(lake, size)
        users_file = workdir / f"users_{size}.txt"
        users_file.write_text("\n".join(users) + "\n")
        argv = [*ctx.job_arguments(top_k), "--model", str(model_path), "--users", str(users_file)]
        frames: list[pd.DataFrame] = []
        peaks: list[int] = []

        def job(size: int = size, argv: list[str] = argv, peaks: list[int] = peaks) -> None:
            ctx.log(
                f"part 5: jobs.score_users, {size} users x "
                f"{cfg.score.candidates.per_user} candidates"
            )
            with TreeRssSampler(interval_s=0.2) as sampler:
                code = score_users.main(argv)
            peaks.append(sampler.peak_bytes)
            if code != 0:
                raise RuntimeError(f"jobs.score_users exited with {code}")

        def prepare(side: str, frames: list[pd.DataFrame] = frames) -> None:
            if side != "torch" or frames:
                return
            # The pairs the job wrote, through the job's own feature code path.
            pairs = spark.createDataFrame(written_pairs())
            history = history_events(spark, lake, cfg.score, cfg.features.gold, plan.day)
            features = scoring_features(
                spark, lake, cfg.score, cfg.features.gold, plan, pairs, history
            )
            frames.append(features.select(*columns.names()).toPandas())

        def forward(frames: list[pd.DataFrame] = frames) -> None:
            frame = frames[0]
            step = cfg.score.batch_size
            for start in range(0, len(frame), step):
                predict_frame(model, frame.iloc[start : start + step], columns)

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            seconds = time_interleaved(
                {"job": job, "torch": forward}, profile.repeats, before=prepare
            )
        finally:
            torch.set_num_threads(previous_threads)
        pairs = len(written_pairs())
        if len(frames[0]) != pairs:
            raise RuntimeError(f"feature rows {len(frames[0])} != scored pairs {pairs}")
        job_rates, torch_rates = rates(pairs, seconds["job"]), rates(pairs, seconds["torch"])
        result.figures.append(
            Figure(
                name=f"jobs.score_users, {size:,} users",
                value=median(job_rates),
                unit="pairs/s",
                runs=profile.repeats,
                baseline=f"predict_frame in memory, same pairs, {threads} torch threads",
                baseline_value=median(torch_rates),
                ratio=paired_ratio(job_rates, torch_rates),
                note=f"{pairs:,} pairs; job median {median(seconds['job']):.1f} s end to end; "
                f"peak RSS {median([float(p) for p in peaks]) / 2**30:.2f} GiB (process tree)",
            )
        )
    result.notes += [
        "The job's time is end to end (users, candidates, point-in-time features, scoring in "
        "mapInPandas, ranking, Delta write and its check) in the run's Spark session; the "
        "baseline is only the forward passes, so the ratio is what everything around the "
        "model costs.",
        f"score.top_k = score.candidates.per_user = {base.score.candidates.per_user} so every "
        f"scored pair is written; scoring day {plan.day}; freshly initialised "
        f"{cfg.model.architecture} weights.",
    ]
    return result
