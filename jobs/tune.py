"""Hyperparameter search with Ray Tune and ASHA, each trial a run of the train job's path.

Local (starts a local Ray, like jobs.train):
    python -m jobs.tune --config cluster_configs/local.yaml

On a Ray cluster: as jobs.train, with --ray-address auto. The search space, the metric and
ASHA's settings are the config's ``tune:`` section (mtl_model/tune_config.py).

Outputs in <run.storage_path>/<tune.name>/: best_config.yaml (this config with the winning
trial's values: ``python -m jobs.train --config best_config.yaml`` trains it), trials.json
(every trial: values, metric per epoch, last and best, epochs run, stopped early or not),
trials/<trial id>/ (each trial's Ray Train run) and Ray Tune's own state.
Exit 0: a trial won; 1: every trial failed (trials.json says why); 2: bad config, no gold
build, or the search directory exists already (nothing written).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import yaml

from jobs.config import PipelineConfig, job_config
from jobs.train import add_ray_address_argument, checked_run_name, local_run_dir, ray_for_job
from mtlrec.config import ConfigError, add_config_arguments
from mtlrec.errors import CheckError, InputError, run_job
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.log import get_logger, log_stage

_log = get_logger("jobs.tune")

BEST_CONFIG = "best_config.yaml"
TRIALS = "trials.json"


class SearchExistsError(InputError):
    """The search directory holds an earlier search."""


class EveryTrialFailed(CheckError):
    """No trial finished with a value of the metric."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.tune",
        description="Search model/train values with Ray Tune (ASHA); each trial trains like "
        "jobs.train. Writes best_config.yaml and trials.json under run.storage_path.",
    )
    add_config_arguments(parser)
    add_ray_address_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, *, may_reexec: bool = False) -> int:
    """The job; ``may_reexec`` as in ``jobs.train.main`` (private network namespace)."""
    return run_job("tune", lambda: _tune(argv, may_reexec))


def _tune(argv: list[str] | None, may_reexec: bool) -> None:
    args = parse_args(argv)
    cfg = job_config(args, "tune")
    # Heavy imports after the config is known to be valid: --help and bad configs stay fast.
    from mtl_model.ray_train import init_ray, resolve_inputs, train_rows_for
    from mtl_model.tune import SearchPlan, apply_values, best_trial, run_search, search_ray

    name = checked_run_name(cfg.tune.name or f"tune-{datetime.now(UTC):%Y%m%dT%H%M%S}")
    search_dir = local_run_dir(cfg, name)
    if search_dir.exists():
        raise SearchExistsError(f"{search_dir} exists already: choose another tune.name")
    ray_cfg = search_ray(ray_for_job(cfg, args.ray_address, "jobs.tune", argv, may_reexec))

    # One gold build for the whole search: every trial reads exactly these files.
    lake = Lake.from_config(cfg.lake)
    snapshot = GoldSnapshot.resolve(lake)
    task = cfg.tune.metric.split("/")[1]
    tasks = [t.name for t in snapshot.spec.tasks]
    if task not in tasks:
        raise ConfigError(f"tune.metric {cfg.tune.metric}: no task {task!r} in {tasks}")
    inputs = resolve_inputs(lake, snapshot, cfg.run)
    train_rows_for(inputs, ray_cfg.num_workers)

    storage = cfg.run.storage_path
    plan = SearchPlan(
        name=name,
        storage_path=str(Path(storage).resolve()) if "://" not in storage else storage,
        # Credentials never go into a trial's config or the written file (the trials
        # read through ``inputs``, which carries the lake's storage options).
        base=apply_values(
            cfg.model_dump(mode="json", exclude={"lake": {"storage_options"}}),
            {"train.epochs": cfg.tune.asha.max_epochs},  # ASHA's horizon is every trial's
        ),
        tune=cfg.tune,
        ray=ray_cfg,
        inputs=inputs,
    )
    per_trial = cfg.tune.trial_cpus + ray_cfg.num_workers * ray_cfg.cpus_per_worker
    init_ray(ray_cfg, cpus_needed=cfg.tune.max_concurrent_trials * per_trial)
    _log.info(
        "search %s: %d trial(s) of %s, ASHA to %d epoch(s), ranked by %s (%s), gold build %s",
        name,
        cfg.tune.num_samples,
        ", ".join(cfg.tune.search_space) or "the config as is",
        cfg.tune.asha.max_epochs,
        cfg.tune.metric,
        cfg.tune.mode,
        snapshot.build_id,
    )
    trials = run_search(plan)
    winner = best_trial(trials, cfg.tune.mode)
    search_dir.mkdir(parents=True, exist_ok=True)
    (search_dir / TRIALS).write_text(
        json.dumps(
            {
                "search": name,
                "metric": cfg.tune.metric,
                "mode": cfg.tune.mode,
                "gold_build_id": snapshot.build_id,
                "best_trial": winner.trial_id if winner is not None else None,
                "trials": [asdict(t) for t in trials],
            },
            indent=2,
        )
    )
    if winner is None:
        raise EveryTrialFailed(
            f"no trial of {len(trials)} finished with a value of {cfg.tune.metric}: "
            f"see {search_dir / TRIALS}"
        )
    # The winner's own config, checked as jobs.train will load it.
    best = PipelineConfig.model_validate(apply_values(plan.base, winner.values))
    header = (
        f"# Written by jobs.tune, search {name}: trial {winner.trial_id} won with "
        f"{cfg.tune.metric} {winner.best:.4f} at epoch {winner.best_epoch}.\n"
        f"# Train it: python -m jobs.train --config {search_dir / BEST_CONFIG}\n"
        "# lake.storage_options are left out (they may hold credentials).\n"
    )
    body = yaml.safe_dump(best.model_dump(mode="json"), sort_keys=False)
    (search_dir / BEST_CONFIG).write_text(header + body)
    log_stage(
        _log,
        "tune",
        search=name,
        trials=len(trials),
        failed=sum(t.status == "failed" for t in trials),
        stopped_early=sum(t.stopped_early for t in trials),
        best_trial=winner.trial_id,
        best=winner.best,
    )
    print(json.dumps({"search_dir": str(search_dir), "best_trial": winner.trial_id}))


if __name__ == "__main__":
    raise SystemExit(main(may_reexec=True))
