"""Part 3: Ray Train data-parallel throughput at a fixed thread budget.

``jobs.train`` runs (in this process, one local Ray for all of them) with 1 worker x
N threads and with 2 workers x N/2 threads, where N = ``ray.num_workers x
ray.cpus_per_worker`` of the profile's config; each reads its run's ``metrics.json``
and takes ``train/samples_per_s`` of the last epoch (the first epoch also pays for
start-up). Scaling efficiency = 2-worker samples/s over 1-worker samples/s: at the same
total threads, 1.0 means data parallelism costs nothing, above 1 it helps (e.g. more
input-pipeline overlap), below 1 it costs (gradient all-reduce, duplicated reading).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from benchmarks.context import BenchContext
from benchmarks.harness import Figure, PartResult, median, paired_ratio, time_interleaved

TITLE = "Training: Ray Train samples/s, 1 vs 2 workers at the same total threads"


def last_epoch_metric(metrics_file: Path, key: str) -> float:
    """``key`` of the last epoch in a run's metrics.json history."""
    history = json.loads(metrics_file.read_text())["history"]
    if not history or key not in history[-1]:
        raise KeyError(f"{metrics_file}: no {key!r} in the last epoch of the history")
    return float(history[-1][key])


def run(ctx: BenchContext) -> PartResult:
    import ray

    import jobs.train

    profile = ctx.profile
    cfg = ctx.shared_config()
    total_threads = max(2, int(cfg.ray.num_workers * cfg.ray.cpus_per_worker))
    if total_threads % 2:
        total_threads += 1
    runs_dir = ctx.part_dir("training_runs")
    layouts = {"1 worker": (1, total_threads), "2 workers": (2, total_threads // 2)}
    samples: dict[str, list[float]] = {name: [] for name in layouts}
    waits: dict[str, list[float]] = {name: [] for name in layouts}
    counter = iter(range(1_000_000))

    def train(name: str) -> None:
        workers, threads = layouts[name]
        run_name = f"bench-w{workers}-{next(counter)}"
        ctx.log(f"part 3: jobs.train, {workers} worker(s) x {threads} thread(s) ({run_name})")
        code = jobs.train.main(
            ctx.job_arguments(
                [
                    f"run.storage_path={runs_dir}",
                    f"run.name={run_name}",
                    f"ray.num_workers={workers}",
                    f"ray.cpus_per_worker={threads}",
                    f"run.torch_threads_per_worker={threads}",
                    f"train.epochs={profile.train_epochs}",
                    f"train.early_stopping.patience={profile.train_epochs}",
                ]
            )
        )
        if code != 0:
            raise RuntimeError(f"jobs.train exited with {code} for run {run_name}")
        metrics = runs_dir / run_name / "metrics.json"
        samples[name].append(last_epoch_metric(metrics, "train/samples_per_s"))
        waits[name].append(last_epoch_metric(metrics, "train/data_wait_share"))

    try:
        time_interleaved(
            {name: partial(train, name) for name in layouts}, profile.repeats
        )
    finally:
        ray.shutdown()
    one, two = samples["1 worker"], samples["2 workers"]
    result = PartResult(key="3", title=TITLE)
    for name, (workers, threads) in layouts.items():
        result.figures.append(
            Figure(
                name=f"train samples/s, {workers} worker(s) x {threads} thread(s)",
                value=median(samples[name]),
                unit="samples/s",
                runs=profile.repeats,
                baseline="1 worker" if workers > 1 else "",
                baseline_value=median(one) if workers > 1 else None,
                ratio=paired_ratio(two, one) if workers > 1 else None,
                note=f"data-wait share {median(waits[name]):.2f} (rank 0)",
            )
        )
    result.figures.append(
        Figure(
            name="scaling efficiency, 2 workers vs 1 at the same total threads",
            value=paired_ratio(two, one),
            unit="ratio",
            runs=profile.repeats,
            note="ideal 1.0",
        )
    )
    result.notes += [
        f"Each run is `jobs.train.main` with {profile.train_epochs} epoch(s) of "
        f"{cfg.model.architecture}, batch {cfg.train.batch_size} per worker; samples/s is "
        "metrics.json history[-1]['train/samples_per_s'] (all ranks' examples over rank 0's "
        "epoch wall time).",
        f"All runs share one local Ray started with {total_threads} CPUs; the two layouts "
        "alternate round by round.",
    ]
    return result
