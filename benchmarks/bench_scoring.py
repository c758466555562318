"""Part 5: batch scoring through the Spark job against a plain torch forward pass.

User-item pairs scored per second by ``jobs.score_users`` (in this process, the run's
Spark session) against ``mtl_model.scoring.predict_frame`` — the function the job's
workers call — over the same pairs' feature rows already in memory, with as many torch
threads as Spark has cores x ``score.torch_threads``: the model's own limit here.

One row per size in ``scoring_pairs``: pairs / ``score.candidates.per_user`` users, or,
when the dataset holds fewer users, all of them with as many candidates each as it takes
(the note says which). A small size shows the fixed costs, a size of >= 1M pairs the cost
per pair (DESIGN.md 7: scoring >= 0.3x the forward pass). Each row also gives the peak
RSS of the driver (this Python process and the JVM it started, which in local mode holds
the executor too) and of the whole process tree (with the Spark Python workers) during
the job: both should stay flat as the size grows (nothing per user is collected).

The job keeps ``score.top_k`` = candidates per user so every scored pair is written and
counted (the job itself checks each user holds exactly that many ranked rows). The model
has freshly initialised weights of the configured architecture, recorded against the
lake's gold build: throughput does not depend on the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import psutil
import torch

from benchmarks.bench_generator import TreeRssSampler
from benchmarks.context import BenchContext
from benchmarks.harness import Figure, PartResult, median, paired_ratio, rates, time_interleaved
from mtlrec.lake import Lake
from mtlrec.tables import SILVER_USERS

if TYPE_CHECKING:
    from feature_engineering.scoring import ScoringPlan
    from jobs.config import PipelineConfig

TITLE = "Scoring: Spark job pairs/s vs an in-memory torch forward pass"


def pick_users(lake: Lake, pairs: int, per_user: int) -> tuple[list[str], int]:
    """The first users of silver/users (by id) and the candidates each, for ``pairs`` pairs:
    ``pairs / per_user`` users, or all of them with more candidates each."""
    users = sorted(lake.read_arrow(SILVER_USERS, columns=["user_id"]).column("user_id").to_pylist())
    wanted = -(-pairs // per_user)
    if len(users) >= wanted:
        return users[:wanted], per_user
    return users, -(-pairs // len(users))


class DriverRssSampler(TreeRssSampler):
    """Peak RSS of this process and the JVM it started: the driver, without the Spark
    Python workers (the JVM's descendants)."""

    def _sample(self) -> int:
        root = psutil.Process()
        total = 0
        for process in [root, *root.children(recursive=False)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total


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
    lake = Lake.from_config(base.lake)
    build = read_build(lake)
    if build is None:
        raise RuntimeError("the shared dataset has no gold build")
    workdir = ctx.part_dir("scoring")
    torch.manual_seed(0)
    model_path = workdir / "model.pt"
    model_cfg = base.model
    save_artifact(
        artifact_from_model(
            build_model(build.spec, model_cfg), build.spec, model_cfg, gold_build=build.ref
        ),
        model_path,
    )
    spark = get_spark(base.spark, base.lake)
    model = load_artifact(model_path).build()
    threads = spark.sparkContext.defaultParallelism * base.score.torch_threads
    version = model_version_of(model_path.read_bytes())
    columns = feature_columns(build.spec)
    result = PartResult(key="5", title=TITLE)
    day = ""

    for size in profile.scoring_pairs:
        users, per_user = pick_users(lake, size, base.score.candidates.per_user)
        # Every scored pair is written (top_k = candidates per user) and counted.
        extra = [f"score.candidates.per_user={per_user}", f"score.top_k={per_user}"]
        cfg = ctx.shared_config(extra)
        plan = plan_scoring(cfg.score, cfg.features.gold, lake, str(model_path), None)
        day = plan.day
        users_file = workdir / f"users_{size}.txt"
        users_file.write_text("\n".join(users) + "\n")
        argv = [*ctx.job_arguments(extra), "--model", str(model_path), "--users", str(users_file)]
        frames: list[pd.DataFrame] = []
        peaks: list[tuple[int, int]] = []

        def written_pairs(plan: ScoringPlan = plan) -> pd.DataFrame:
            table = lake.read_arrow(
                plan.table,
                filters=[("scored_dt", "=", plan.day), ("model_version", "=", version)],
                columns=["user_id", "item_id"],
            )
            return table.to_pandas()

        def job(
            size: int = size, argv: list[str] = argv, peaks: list[tuple[int, int]] = peaks
        ) -> None:
            ctx.log(f"part 5: jobs.score_users, {size:,} pairs")
            with TreeRssSampler(interval_s=0.2) as tree, DriverRssSampler(0.2) as driver:
                code = score_users.main(argv)
            peaks.append((driver.peak_bytes, tree.peak_bytes))
            if code != 0:
                raise RuntimeError(f"jobs.score_users exited with {code}")

        def prepare(
            side: str,
            frames: list[pd.DataFrame] = frames,
            cfg: PipelineConfig = cfg,
            plan: ScoringPlan = plan,
        ) -> None:
            if side != "torch" or frames:
                return
            # The pairs the job wrote, through the job's own feature code path.
            pairs = spark.createDataFrame(written_pairs(plan))
            history = history_events(spark, lake, cfg.score, cfg.features.gold, plan.day)
            features = scoring_features(
                spark, lake, cfg.score, cfg.features.gold, plan, pairs,
                pairs.select("user_id").distinct(), history,
            )  # fmt: skip
            frames.append(features.select(*columns.names()).toPandas())

        def forward(frames: list[pd.DataFrame] = frames, step: int = cfg.score.batch_size) -> None:
            frame = frames[0]
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
        driver_gib = median([float(d) for d, _ in peaks]) / 2**30
        tree_gib = median([float(t) for _, t in peaks]) / 2**30
        result.figures.append(
            Figure(
                name=f"jobs.score_users, {pairs:,} pairs",
                value=median(job_rates),
                unit="pairs/s",
                runs=profile.repeats,
                baseline=f"predict_frame in memory, same pairs, {threads} torch threads",
                baseline_value=median(torch_rates),
                ratio=paired_ratio(job_rates, torch_rates),
                note=f"{len(users):,} users x {per_user} candidates; job median "
                f"{median(seconds['job']):.1f} s end to end; peak RSS driver "
                f"{driver_gib:.2f} GiB, process tree {tree_gib:.2f} GiB",
            )
        )
    result.notes += [
        "The job's time is end to end (users, candidates, point-in-time features, scoring in "
        "mapInArrow, ranking, Delta write and its check) in the run's Spark session; the "
        "baseline is only the forward passes, so the ratio is what everything around the "
        "model costs.",
        f"score.top_k = candidates per user so every scored pair is written; scoring day "
        f"{day}; freshly initialised {base.model.architecture} weights.",
    ]
    return result
