"""Per-task losses with funnel masking, and strategies that weight them into one objective.

Masking: a task's loss covers rows whose label is defined (finite). A task
with a ``parent`` learns its conditional rate, so its loss also requires the
parent label to be 1 (CVR on clicked impressions only) — except binary child
tasks of an entire-space model (ESMM), whose chained probability
``p(parent) x p(task | parent)`` is fitted against the unconditional label on
every impression. Regression children stay conditional under ESMM too: their
value is only observed where the parent happened.

Scale of a conditional (child) loss, ``WeightingConfig.child_loss_scale``:
- ``batch`` (default): the child's per-row losses summed over the rows where the parent
  happened, divided by every row where the child's label is defined (the batch). Each
  impression then weighs the same in every task, and a child's share of the objective
  follows its parent's positive rate (clicks are ~3.6 % of the demo's impressions);
- ``parent_positives``: the mean over the parent's positives only. A child task then
  weighs as much as its parent although a few rows carry it, and those rows get large
  gradients in the shared layers (demo data: MMoE lost 0.02 test click AUC to
  single-task, issue 19).

Weighting strategies (``build_weighting``):
- ``fixed``: ``sum_t w_t L_t``;
- ``uncertainty`` (Kendall et al., 2018): learned ``s_t = log sigma_t^2``;
  binary ``exp(-s) L + s/2``, regression ``exp(-s) L / 2 + s/2``;
- ``gradnorm`` (Chen et al., 2018): learned weights whose gradient pulls each
  task's gradient norm on the last shared layer towards the mean norm scaled
  by its relative inverse training rate; renormalised to sum to their start;
- ``dwa`` (Liu et al., 2019): weights ``T softmax(r_t / temperature)`` from the
  ratio of each task's last two epoch losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_model.architectures import MultiTaskModel
from mtl_model.config import ChildLossScale, WeightingConfig
from mtl_model.features import Batch


def _log1mexp(log_p: Tensor) -> Tensor:
    """log(1 - exp(log_p)) for log_p < 0, numerically stable at both ends."""
    log_p = log_p.clamp(max=-1e-7)
    return torch.where(
        log_p > -math.log(2), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p))
    )


def task_mask(model: MultiTaskModel, batch: Batch, task: str) -> Tensor:
    """Rows on which ``task``'s loss is defined (see the module docstring)."""
    label = batch[model.label_columns[task]]
    mask = torch.isfinite(label)
    parent = model.parents[task]
    entire_space = model.entire_space and model.task_types[task] == "binary"
    if parent is not None and not entire_space:
        mask = mask & (batch[model.label_columns[parent]] == 1)
    return mask


def _masked_mean(values: Tensor, mask: Tensor, denominator: Tensor) -> Tensor:
    """Sum of ``values`` [B] over ``mask`` [B] (bool) divided by the rows in ``denominator``.

    A batch without a defined row still yields a (zero) loss connected to the graph,
    so every head gets a gradient and DDP sees every parameter used.
    """
    weights = mask.to(values.dtype)
    return (values * weights).sum() / denominator.to(values.dtype).sum().clamp(min=1.0)


def task_losses(
    model: MultiTaskModel,
    raw: dict[str, Tensor],
    batch: Batch,
    child_loss_scale: ChildLossScale,
) -> dict[str, Tensor]:
    """Masked loss per task from ``model.forward``'s raw outputs.

    A task without a parent (and an entire-space child) is averaged over its defined rows;
    a conditional child as ``child_loss_scale`` says (see the module docstring).
    """
    losses: dict[str, Tensor] = {}
    for task in model.task_names:
        mask = task_mask(model, batch, task)
        defined = torch.isfinite(batch[model.label_columns[task]])
        denominator = defined if child_loss_scale == "batch" else mask
        label = torch.where(mask, batch[model.label_columns[task]].float(), 0.0)
        output = raw[task].float()
        if model.task_types[task] == "regression":
            per_row = (output - label) ** 2
        elif model.entire_space and model.parents[task] is not None:
            log_p = model.log_probability(raw, task)
            per_row = -(label * log_p + (1 - label) * _log1mexp(log_p))
        else:
            per_row = F.binary_cross_entropy_with_logits(output, label, reduction="none")
        losses[task] = _masked_mean(per_row, mask, denominator)
    return losses


SharedParameters = Callable[[], list[nn.Parameter]]


class LossWeighting(nn.Module):
    """Combines per-task losses; may own learned parameters (synchronised by the loop)."""

    base_weights: Tensor

    def __init__(self, task_names: list[str], cfg: WeightingConfig) -> None:
        super().__init__()
        unknown = set(cfg.task_weights) - set(task_names)
        if unknown:
            raise ValueError(f"weighting.task_weights names unknown tasks {sorted(unknown)}")
        self.task_names = list(task_names)
        self.cfg = cfg
        self.register_buffer(
            "base_weights", torch.tensor([cfg.task_weights.get(t, 1.0) for t in task_names])
        )

    def _stack(self, losses: dict[str, Tensor]) -> Tensor:
        return torch.stack([losses[t] for t in self.task_names])

    def combine(self, losses: dict[str, Tensor], shared: SharedParameters) -> Tensor:
        """The scalar to back-propagate. ``shared`` yields the last shared layer (GradNorm)."""
        return (self.base_weights * self._stack(losses)).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.base_weights.tolist(), strict=True))

    def after_step(self) -> None:
        """Called after each optimizer step."""

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        """Called with each epoch's mean per-task training loss (identical on every rank)."""


class UncertaintyWeighting(LossWeighting):
    scale: Tensor

    def __init__(self, task_names: list[str], task_types: dict[str, str], cfg: WeightingConfig):
        super().__init__(task_names, cfg)
        self.log_vars = nn.Parameter(torch.zeros(len(task_names)))
        scale = [0.5 if task_types[t] == "regression" else 1.0 for t in task_names]
        self.register_buffer("scale", torch.tensor(scale))

    def combine(self, losses: dict[str, Tensor], shared: SharedParameters) -> Tensor:
        precision = torch.exp(-self.log_vars)
        terms = self.scale * precision * self._stack(losses) + 0.5 * self.log_vars
        return (self.base_weights * terms).sum()

    def current_weights(self) -> dict[str, float]:
        weights = self.base_weights * self.scale * torch.exp(-self.log_vars.detach())
        return dict(zip(self.task_names, weights.tolist(), strict=True))


class GradNormWeighting(LossWeighting):
    initial_losses: Tensor
    initialised: Tensor

    def __init__(self, task_names: list[str], cfg: WeightingConfig) -> None:
        super().__init__(task_names, cfg)
        self.weights = nn.Parameter(self.base_weights.clone())
        self.register_buffer("initial_losses", torch.zeros(len(task_names)))
        self.register_buffer("initialised", torch.tensor(False))

    def combine(self, losses: dict[str, Tensor], shared: SharedParameters) -> Tensor:
        stacked = self._stack(losses)
        if not bool(self.initialised):
            self.initial_losses.copy_(stacked.detach().clamp(min=1e-8))
            self.initialised.fill_(True)
        if torch.is_grad_enabled() and self.training:
            params = shared()
            norms = []
            for loss in stacked:
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                squares = [g.pow(2).sum() for g in grads if g is not None]
                norms.append(torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(()))
            grad_norms = self.weights * torch.stack(norms).detach()
            ratio = stacked.detach() / self.initial_losses
            target = grad_norms.mean().detach() * (ratio / ratio.mean()) ** self.cfg.gradnorm_alpha
            balance = (grad_norms - target.detach()).abs().sum()
            (self.weights.grad,) = torch.autograd.grad(balance, [self.weights])
        return (self.weights.detach() * stacked).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.weights.detach().tolist(), strict=True))

    def after_step(self) -> None:
        with torch.no_grad():
            self.weights.clamp_(min=1e-4)
            self.weights.mul_(self.base_weights.sum() / self.weights.sum())


class DWAWeighting(LossWeighting):
    weights: Tensor
    previous_losses: Tensor
    epochs_seen: Tensor

    def __init__(self, task_names: list[str], cfg: WeightingConfig) -> None:
        super().__init__(task_names, cfg)
        # Buffers, so a checkpointed state_dict resumes DWA where it stopped.
        self.register_buffer("weights", torch.ones(len(task_names)))
        self.register_buffer("previous_losses", torch.zeros(len(task_names)))
        self.register_buffer("epochs_seen", torch.tensor(0))

    def combine(self, losses: dict[str, Tensor], shared: SharedParameters) -> Tensor:
        return (self.base_weights * self.weights * self._stack(losses)).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, (self.base_weights * self.weights).tolist(), strict=True))

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        latest = torch.tensor([mean_losses[t] for t in self.task_names])
        if int(self.epochs_seen) > 0:
            rate = latest / self.previous_losses.clamp(min=1e-8)
            softmax = torch.softmax(rate / self.cfg.dwa_temperature, dim=0)
            self.weights.copy_(len(self.task_names) * softmax)
        self.previous_losses.copy_(latest)
        self.epochs_seen += 1


def build_weighting(model: MultiTaskModel, cfg: WeightingConfig) -> LossWeighting:
    regression = [t for t in model.task_names if model.task_types[t] == "regression"]
    defaults = {t: cfg.regression_weight for t in regression}
    cfg = cfg.model_copy(update={"task_weights": {**defaults, **cfg.task_weights}})
    if cfg.strategy == "uncertainty":
        return UncertaintyWeighting(model.task_names, dict(model.task_types), cfg)
    if cfg.strategy == "gradnorm":
        model.gradnorm_parameters()  # fails early for an architecture without shared layers
        return GradNormWeighting(model.task_names, cfg)
    if cfg.strategy == "dwa":
        return DWAWeighting(model.task_names, cfg)
    return LossWeighting(model.task_names, cfg)
