"""The training loop: plain PyTorch, one epoch per call, every knob from ``TrainConfig``.

Data-source agnostic: ``train_epoch`` takes any iterable of batches
(``{column: tensor}``, see ``mtlrec.feature_spec``) and the model either bare or
wrapped in ``DistributedDataParallel``. For data-parallel training:

- pass ``process_group`` (or leave None to use the default group when one is
  initialised): learned loss weights (uncertainty, GradNorm) live outside the
  DDP module, so their gradients are all-reduced here; epoch losses are
  averaged across ranks so DWA sees the same numbers everywhere; ``evaluate``
  merges metric state exactly (``MetricAccumulator.synced``).
- pass ``max_steps`` (e.g. the smallest shard's batch count, agreed with an
  all-reduce MIN) when ranks read unequal shards: every rank then runs the same
  number of DDP steps and none waits forever for a missing all-reduce.

``EpochStats.data_wait_share`` is the share of the epoch spent waiting for the
next batch (the input pipeline) rather than computing.

``fit`` drives the epochs (train, validate, early stopping, best weights, one history
record per epoch) for every run: in-process (tests, the quality benchmark) and on each
Ray Train worker (``mtl_model.ray_train``), which adds only what Ray needs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from mtl_model.architectures import MultiTaskModel
from mtl_model.checkpoint import TrainState, copy_weights
from mtl_model.config import EarlyStoppingConfig, ScheduleConfig, TrainConfig
from mtl_model.distill import distillation_losses
from mtl_model.features import Batch
from mtl_model.losses import LossWeighting, build_weighting, task_losses
from mtl_model.metrics import MetricAccumulator
from mtlrec.feature_spec import FeatureSpec

EvalBatch = Mapping[str, Tensor | np.ndarray]
Logger = Callable[[str], None]


@dataclass
class EpochStats:
    steps: int
    examples: int
    loss: float
    task_losses: dict[str, float]
    task_weights: dict[str, float]
    lr: float
    data_wait_s: float
    compute_s: float

    @property
    def data_wait_share(self) -> float:
        total = self.data_wait_s + self.compute_s
        return self.data_wait_s / total if total > 0 else 0.0


def unwrap(model: nn.Module) -> MultiTaskModel:
    core = model.module if isinstance(model, DistributedDataParallel) else model
    if not isinstance(core, MultiTaskModel):
        raise TypeError(f"expected a MultiTaskModel (optionally in DDP), got {type(core)}")
    return core


def _distributed(process_group: dist.ProcessGroup | None) -> bool:
    return process_group is not None or (dist.is_available() and dist.is_initialized())


def build_optimizer(
    model: nn.Module, weighting: LossWeighting, cfg: TrainConfig
) -> torch.optim.Optimizer:
    """Trainable (unfrozen) model parameters, plus learned loss weights at their own lr."""
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    learned = [p for p in weighting.parameters() if p.requires_grad]
    if learned:
        groups.append({"params": learned, "lr": cfg.weighting.lr, "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_multiplier(step: int, cfg: ScheduleConfig, total_steps: int | None) -> float:
    """Linear warmup, then constant, cosine (to ``min_lr_ratio``) or step decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "step":
        return float(cfg.step_gamma ** ((step - cfg.warmup_steps) // cfg.step_every))
    horizon = cfg.total_steps or total_steps
    if horizon is None:
        raise ValueError("train.schedule.total_steps is needed for the cosine schedule")
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, horizon - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int | None = None
) -> LambdaLR:
    """Schedules the model's lr; learned loss weights (a second group) keep theirs."""
    lambdas: list[Callable[[int], float]] = [
        lambda step: lr_multiplier(step, cfg.schedule, total_steps)
    ]
    lambdas += [lambda step: 1.0] * (len(optimizer.param_groups) - 1)
    return LambdaLR(optimizer, lambdas)


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if cfg.amp == "off":
        return contextlib.nullcontext()
    if cfg.amp == "fp16" and device.type == "cpu":
        raise ValueError("train.amp=fp16 needs a GPU; use bf16 or off on CPU")
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: EvalBatch, device: torch.device) -> dict[str, Any]:
    """Tensors to ``device``; other columns (e.g. string ids as numpy) stay as they are."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


def _all_reduce_mean(values: Tensor, process_group: dist.ProcessGroup | None) -> Tensor:
    dist.all_reduce(values, group=process_group)
    return values / dist.get_world_size(process_group)


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    weighting: LossWeighting,
    cfg: TrainConfig,
    *,
    scheduler: LambdaLR | None = None,
    process_group: dist.ProcessGroup | None = None,
    max_steps: int | None = None,
    teacher: MultiTaskModel | None = None,
    log: Logger | None = None,
) -> EpochStats:
    """One pass over ``batches`` (at most ``max_steps``); ``teacher`` switches on distillation."""
    core = unwrap(model)
    device = next(core.parameters()).device
    distributed = _distributed(process_group)
    model.train()
    weighting.train()
    if teacher is not None:
        teacher.eval()
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    learned_weights = [p for p in weighting.parameters() if p.requires_grad]
    loss_sums = torch.zeros(len(core.task_names) + 1, dtype=torch.float64, device=device)
    steps = examples = 0
    wait = compute = 0.0
    iterator = iter(batches)
    while max_steps is None or steps < max_steps:
        started = time.perf_counter()
        try:
            batch = to_device(next(iterator), device)
        except StopIteration:
            break
        fetched = time.perf_counter()
        wait += fetched - started

        optimizer.zero_grad(set_to_none=True)
        with autocast(cfg, device):
            raw = model(batch)
            if teacher is not None:
                with torch.no_grad():
                    teacher_raw = teacher(batch)
        if teacher is not None:
            losses = distillation_losses(
                core, raw, teacher_raw, batch, cfg.distill, cfg.weighting.child_loss_scale
            )
        else:
            losses = task_losses(core, raw, batch, cfg.weighting.child_loss_scale)
        total = weighting.combine(losses, core.gradnorm_parameters)
        if scaler is not None:
            scaler.scale(total).backward()
        else:
            total.backward()
        if distributed:
            for param in learned_weights:
                if param.grad is not None:
                    param.grad = _all_reduce_mean(param.grad, process_group)
        if cfg.grad_clip_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        weighting.after_step()
        if scheduler is not None:
            scheduler.step()

        loss_sums += torch.stack([total.detach(), *(losses[t].detach() for t in core.task_names)])
        steps += 1
        examples += len(next(iter(batch.values())))
        compute += time.perf_counter() - fetched
        if log is not None and steps % cfg.log_every_steps == 0:
            log(f"step {steps}: loss {total.item():.4f} lr {optimizer.param_groups[0]['lr']:.2e}")

    counted = torch.cat([loss_sums, torch.tensor([steps], dtype=torch.float64, device=device)])
    if distributed:
        dist.all_reduce(counted, group=process_group)
    means = (counted[:-1] / counted[-1].clamp(min=1)).tolist()
    task_means = dict(zip(core.task_names, means[1:], strict=True))
    if steps:
        weighting.end_epoch(task_means)
    return EpochStats(
        steps=steps,
        examples=examples,
        loss=means[0],
        task_losses=task_means,
        task_weights=weighting.current_weights(),
        lr=float(optimizer.param_groups[0]["lr"]),
        data_wait_s=wait,
        compute_s=compute,
    )


def evaluate(
    model: nn.Module,
    batches: Iterable[EvalBatch],
    spec: FeatureSpec,
    *,
    process_group: dist.ProcessGroup | None = None,
    group_column: str | None = "user_id",
) -> dict[str, float]:
    """Per-task metrics of ``predict`` over ``batches``, exact across ranks when distributed.

    GAUC groups by ``group_column`` when the batches carry it (int ids or strings).
    """
    core = unwrap(model)
    device = next(core.parameters()).device
    was_training = core.training
    core.eval()
    accumulator = MetricAccumulator(spec)
    with torch.no_grad():
        for raw_batch in batches:
            batch = to_device(raw_batch, device)
            groups = batch.get(group_column) if group_column is not None else None
            accumulator.update(core.predict(batch), batch, groups)
    core.train(was_training)
    if _distributed(process_group):
        accumulator = accumulator.synced(process_group)
    return accumulator.compute()


class EarlyStopping:
    """Tracks one metric across epochs; ``update`` returns True when training should stop.

    Its whole state is ``best``, ``best_epoch`` and ``epochs_without_improvement``, saved
    and restored through ``state_dict`` / ``load_state_dict`` with the rest of a checkpoint.
    """

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg
        self.best: float | None = None
        self.best_epoch = -1
        self.epochs_without_improvement = 0

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        delta = value - self.best if self.cfg.mode == "max" else self.best - value
        return delta > self.cfg.min_delta

    def update(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        if self.cfg.metric not in metrics:
            raise KeyError(
                f"train.early_stopping.metric {self.cfg.metric!r} is not among the metrics "
                f"{sorted(metrics)}"
            )
        value = metrics[self.cfg.metric]
        if self.improved(value):
            self.best, self.best_epoch = value, epoch
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return self.epochs_without_improvement > self.cfg.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.epochs_without_improvement = int(state["epochs_without_improvement"])


@dataclass
class EpochBatches:
    """One epoch's training input.

    ``max_steps``: train at most this many steps (data-parallel ranks agree on the smallest
    shard's batch count, so none waits forever for a missing all-reduce). ``finish``:
    called after the epoch; returns the rows this rank read (a Petastorm shard drains and
    verifies its row count there). Without it the rows read are the examples trained on.
    """

    batches: Iterable[Batch]
    max_steps: int | None = None
    finish: Callable[[], int] | None = None


EpochCallback = Callable[[dict[str, float], TrainState], None]


def _prefixed(log: Logger | None, prefix: str) -> Logger | None:
    return None if log is None else lambda line: log(prefix + line)


def fit(
    model: nn.Module,
    train_batches: Callable[[int], EpochBatches],
    val_batches: Callable[[], Iterable[EvalBatch]],
    spec: FeatureSpec,
    cfg: TrainConfig,
    *,
    steps_per_epoch: int | None = None,
    resume: TrainState | None = None,
    teacher: MultiTaskModel | None = None,
    process_group: dist.ProcessGroup | None = None,
    on_epoch: EpochCallback | None = None,
    log: Logger | None = None,
) -> TrainState:
    """The epoch driver of every training run, in-process or on Ray Train workers.

    Per epoch: ``train_epoch`` over ``train_batches(epoch)``, ``evaluate`` on
    ``val_batches()``, early stopping on ``train.early_stopping.metric``, one history
    record, then ``on_epoch(record, state)`` (the Ray worker reports and checkpoints
    there). ``resume`` continues from a saved state. At the end the model holds the best
    epoch's weights; the returned state is the last epoch's. ``steps_per_epoch`` sets the
    cosine horizon unless ``train.schedule.total_steps`` does.
    """
    core = unwrap(model)
    device = next(core.parameters()).device
    weighting = build_weighting(core, cfg.weighting).to(device)
    optimizer = build_optimizer(model, weighting, cfg)
    horizon = steps_per_epoch * cfg.epochs if steps_per_epoch is not None else None
    scheduler = build_scheduler(optimizer, cfg, horizon)
    stopper = EarlyStopping(cfg.early_stopping)
    state = TrainState(
        epoch=-1,
        model=copy_weights(core),
        best_model=copy_weights(core),
        weighting=weighting.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        early_stopping=stopper.state_dict(),
        history=[],
    )
    if resume is not None:
        core.load_state_dict(resume.model)
        weighting.load_state_dict(resume.weighting)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        stopper.load_state_dict(resume.early_stopping)
        state = resume
    distributed = _distributed(process_group)

    for epoch in range(state.epoch + 1, cfg.epochs):
        started = time.monotonic()
        data = train_batches(epoch)
        stats = train_epoch(
            model,
            data.batches,
            optimizer,
            weighting,
            cfg,
            scheduler=scheduler,
            process_group=process_group,
            max_steps=data.max_steps,
            teacher=teacher,
            log=_prefixed(log, f"epoch {epoch} "),
        )
        rows_read = data.finish() if data.finish is not None else stats.examples
        seconds = time.monotonic() - started
        examples = stats.examples
        if distributed:
            counted = torch.tensor([examples], dtype=torch.int64, device=device)
            dist.all_reduce(counted, group=process_group)
            examples = int(counted.item())
        metrics = evaluate(
            model,
            val_batches(),
            spec,
            process_group=process_group,
            group_column=cfg.gauc_group_column,
        )
        stop = stopper.update(epoch, metrics)
        record = {
            "epoch": float(epoch),
            "train/loss": stats.loss,
            **{f"train/loss_{task}": value for task, value in stats.task_losses.items()},
            **{f"train/weight_{task}": value for task, value in stats.task_weights.items()},
            "train/samples_per_s": examples / max(seconds, 1e-9),
            "train/data_wait_share": stats.data_wait_share,
            "train/rows_read_rank0": float(rows_read),
            "lr": stats.lr,
            **{f"val/{key}": value for key, value in metrics.items()},
        }
        state = TrainState(
            epoch=epoch,
            model=copy_weights(core),
            best_model=copy_weights(core) if stopper.best_epoch == epoch else state.best_model,
            weighting=weighting.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            early_stopping=stopper.state_dict(),
            history=[*state.history, record],
        )
        if log is not None:
            log(
                f"epoch {epoch}: {record['train/samples_per_s']:.0f} samples/s, data wait "
                f"{100 * stats.data_wait_share:.0f}%, loss {stats.loss:.4f} ("
                + ", ".join(f"{t} {v:.4f}" for t, v in stats.task_losses.items())
                + "), val "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("/auc"))
            )
        if on_epoch is not None:
            on_epoch(record, state)
        if stop:
            break
    core.load_state_dict(state.best_model)
    return state
