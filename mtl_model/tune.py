"""Hyperparameter search on Ray Tune over the train job's own data path and loop.

Each trial is one training run exactly as ``jobs.train`` launches it (``run_training``:
Ray Train workers, Petastorm shards of the gold snapshot the search pinned once,
``mtl_model.loop.fit``), with the trial's values applied to the ``model`` and ``train``
sections. The only addition is a Ray Train callback that forwards each epoch's record
to Tune, where ASHA compares trials at the same epoch and stops the laggards:

    driver (this module)        Tune trial (_trial)              Ray Train workers
    Tuner + ASHA + _Progress -> run_training(callbacks=[_EpochReports]) -> fit(...)
             ^-------------- one record per epoch (val metrics) --------------'

The workers' final report (test metrics of the trial's best epoch) is not forwarded:
the search ranks trials on validation only.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.tune
from ray.train import Checkpoint, UserCallback
from ray.train.v2._internal.execution.context import TrainRunContext
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.ray_train import RunConfigBundle, RunInputs, run_training
from mtl_model.run_config import TrainRunConfig
from mtl_model.tune_config import Choice, LogUniform, TuneConfig, Uniform
from mtlrec.config import RayConfig
from mtlrec.log import get_logger

_log = get_logger("tune")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b[^:]*:")

EPOCHS = "epochs"
"""ASHA's time attribute: epochs a trial has finished (the record's 0-based epoch + 1)."""


def apply_values(config: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` (a pipeline config as plain data) with each dotted path
    of ``values`` set, e.g. ``{"train.lr": 0.003}``."""
    result = copy.deepcopy(dict(config))
    for path, value in values.items():
        *sections, key = path.split(".")
        node = result
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return result


def search_space(cfg: TuneConfig) -> dict[str, Any]:
    """Tune's param space: dotted path -> Tune's distribution."""
    space: dict[str, Any] = {}
    for path, distribution in cfg.search_space.items():
        if isinstance(distribution, Choice):
            space[path] = ray.tune.choice(distribution.values)
        elif isinstance(distribution, LogUniform):
            space[path] = ray.tune.loguniform(distribution.low, distribution.high)
        else:
            assert isinstance(distribution, Uniform)
            space[path] = ray.tune.uniform(distribution.low, distribution.high)
    return space


@dataclass(frozen=True)
class SearchPlan:
    """Everything a search needs, resolved and checked by the job before Ray starts."""

    name: str
    storage_path: str
    """Absolute runs directory (or object-store URI): the search is ``<it>/<name>``."""
    base: dict[str, Any]
    """The pipeline config as plain data, train.epochs = tune.asha.max_epochs; every trial
    starts from it."""
    tune: TuneConfig
    ray: RayConfig
    inputs: RunInputs
    """The gold snapshot's files, pinned once for every trial."""


def search_ray(cfg: RayConfig) -> RayConfig:
    """The Ray section a search runs with: a local Ray gets its dashboard.

    When ASHA stops a trial, Tune ends the trial's process, and with it the Ray Train
    controller; Train's placement-group cleaner then frees the trial's workers once the
    state API (served by the dashboard, on ``ray.dashboard_host``: loopback by default)
    says the controller is gone. Without it the stopped trial's CPUs stay reserved and
    the next trial waits for them forever.
    """
    return cfg if cfg.address is not None else cfg.model_copy(update={"include_dashboard": True})


# ------------------------------------------------------------------------ trial side
class _EpochReports(TuneReportCallback):
    """Forwards the workers' epoch records to Tune, with ``epochs`` for ASHA."""

    def after_report(
        self,
        run_context: TrainRunContext,
        metrics: list[dict[str, Any]],
        checkpoint: Checkpoint | None,
    ) -> None:
        record = metrics[0]  # rank 0's; every rank reports the same merged metrics
        if record.get("done"):  # the final report carries test metrics: not for the search
            return
        # The search keeps no checkpoints of its own (each trial's run directory has them).
        super().after_report(run_context, [{**record, EPOCHS: record["epoch"] + 1}], None)


def _trial_bundle(
    plan_base: Mapping[str, Any], values: Mapping[str, Any], ray_cfg: RayConfig, trials_path: str
) -> RunConfigBundle:
    """The training bundle of one trial: its values over the base config, its runs under
    ``trials_path``."""
    config = apply_values(plan_base, values)
    run = TrainRunConfig.model_validate({**config["run"], "storage_path": trials_path})
    return RunConfigBundle(
        ModelConfig.model_validate(config["model"]),
        TrainConfig.model_validate(config["train"]),
        run,
        ray_cfg,
    )


def _trial(
    values: dict[str, Any],
    *,
    base: dict[str, Any],
    ray_cfg: RayConfig,
    inputs: RunInputs,
    trials_path: str,
) -> None:
    """One Tune trial: the train job's run, named after the trial, reporting each epoch."""
    bundle = _trial_bundle(base, values, ray_cfg, trials_path)
    trial_id = ray.tune.get_context().get_trial_id()
    callbacks: list[UserCallback] = [_EpochReports()]
    result = run_training(inputs, bundle, trial_id, callbacks=callbacks)
    if result.error is not None:
        raise result.error


# ----------------------------------------------------------------------- driver side
class _Asha(ASHAScheduler):
    """ASHA that remembers which trials it stopped before their last epoch."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_early: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        decision = str(super().on_trial_result(tune_controller, trial, result))
        if decision == TrialScheduler.STOP and result.get(EPOCHS, 0) < self._max_t:
            self.stopped_early.add(trial.trial_id)
        return decision


@dataclass
class TrialSummary:
    """One trial as trials.json lists it."""

    trial_id: str
    values: dict[str, Any]
    status: str  # "finished" or "failed"
    epochs: int
    last: float | None  # the metric after the trial's last epoch
    best: float | None  # the best value of the metric over its epochs
    best_epoch: int | None  # 0-based, as in a run's metrics.json
    stopped_early: bool  # ASHA stopped it before tune.asha.max_epochs
    error: str | None = None
    history: list[float | None] = field(default_factory=list)  # the metric per epoch


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def summarise(
    trial_id: str,
    values: dict[str, Any],
    history: list[float | None],
    *,
    mode: str,
    stopped_early: bool,
    error: str | None,
) -> TrialSummary:
    """A trial's summary from its metric per epoch (None where undefined)."""
    scored = [(v, epoch) for epoch, v in enumerate(history) if v is not None]
    best = (max if mode == "max" else min)(scored, default=None)
    return TrialSummary(
        trial_id=trial_id,
        values=values,
        status="failed" if error is not None else "finished",
        epochs=len(history),
        last=history[-1] if history else None,
        best=best[0] if best is not None else None,
        best_epoch=best[1] if best is not None else None,
        stopped_early=stopped_early,
        error=error,
        history=history,
    )


class _Progress(ray.tune.Callback):
    """One log line per finished trial."""

    def __init__(self, cfg: TuneConfig, asha: _Asha) -> None:
        self.cfg = cfg
        self.asha = asha
        self.finished = 0

    def _line(self, trial: Trial, outcome: str) -> None:
        self.finished += 1
        result = trial.last_result or {}
        value = _finite(result.get(self.cfg.metric))
        shown = f"{value:.4f}" if value is not None else "n/a"
        _log.info(
            "trial %d/%d %s %s after %d epoch(s): last %s %s; %s",
            self.finished,
            self.cfg.num_samples,
            trial.trial_id,
            outcome,
            int(result.get(EPOCHS, 0)),
            self.cfg.metric,
            shown,
            ", ".join(f"{k}={v}" for k, v in trial.config.items()),
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        early = trial.trial_id in self.asha.stopped_early
        self._line(trial, "stopped by ASHA" if early else "finished")

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._line(trial, "FAILED")


def _one_line(error: BaseException) -> str:
    """The line of a trial's error that says what failed: the last ``SomeError: ...`` line
    of its text (a Ray error ends with the worker's own exception), without colour codes."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    raised = [line for line in lines if _RAISED.match(line)]
    line = raised[-1] if raised else lines[-1] if lines else type(error).__name__
    return line[:500]


def run_search(plan: SearchPlan) -> list[TrialSummary]:
    """Run every trial of ``plan`` on the Ray this process is connected to."""
    cfg = plan.tune
    asha = _Asha(
        time_attr=EPOCHS,
        max_t=cfg.asha.max_epochs,
        grace_period=cfg.asha.grace_epochs,
        reduction_factor=cfg.asha.reduction_factor,
        # A trial at its last epoch ends by itself; stopping it there would kill it while
        # its workers still evaluate the test split, leaving their cleanup to search_ray's.
        stop_last_trials=False,
    )
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(
            _trial,
            base=plan.base,
            ray_cfg=plan.ray,
            inputs=plan.inputs,
            trials_path=f"{plan.storage_path.rstrip('/')}/{plan.name}/trials",
        ),
        {"CPU": cfg.trial_cpus},
    )
    tuner = ray.tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=ray.tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            scheduler=asha,
            # Tune honours max_concurrent_trials only for a search algorithm it builds.
            search_alg=BasicVariantGenerator(
                random_state=cfg.seed, max_concurrent=cfg.max_concurrent_trials
            ),
            num_samples=cfg.num_samples,
        ),
        run_config=ray.tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage_path,
            callbacks=[_Progress(cfg, asha)],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    summaries = []
    for result in (grid[i] for i in range(len(grid))):
        frame = result.metrics_dataframe
        history: list[float | None] = []
        if frame is not None and cfg.metric in frame:
            history = [_finite(v) for v in frame[cfg.metric].tolist()]
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name)
        summaries.append(
            summarise(
                trial_id,
                dict(result.config or {}),
                history,
                mode=cfg.mode,
                stopped_early=trial_id in asha.stopped_early,
                error=None if result.error is None else _one_line(result.error),
            )
        )
    return summaries


def best_trial(trials: list[TrialSummary], mode: str) -> TrialSummary | None:
    """The finished trial with the best metric at its best epoch (None: no such trial);
    the first one listed on a tie."""
    sign = 1.0 if mode == "max" else -1.0
    scored = [
        (sign * t.best, -i, t)
        for i, t in enumerate(trials)
        if t.status == "finished" and t.best is not None
    ]
    return max(scored, key=lambda entry: entry[:2])[2] if scored else None
