"""Multi-task architectures sharing one interface.

Every model maps a batch to ``forward(batch) -> {task: raw output [B]}``:
a logit for binary tasks, a value for regression tasks. For a task with a
``parent`` the raw output is *conditional* on the parent being 1 (CVR given
click, purchase value given purchase or click). ``predict(batch)`` turns these
into unconditional predictions comparable to each label column by chaining the
funnel: ``p(task) = p(task | parent) * p(parent)``, and for regression
``E[value] = E[value | parent] * p(parent)``.

Architectures:
- ``single_task``: one complete model per task (own embeddings, bottom, tower);
- ``shared_bottom``: one shared MLP under per-task towers;
- ``mmoe``: shared experts mixed per task by softmax gates (Ma et al., 2018);
- ``ple``: stacked CGC levels with task-specific and shared experts (Tang et al., 2020);
- ``esmm``: shared embeddings, one tower per task, trained over the entire space:
  child binary tasks are fitted as ``pCTCVR = pCTR x pCVR`` on all impressions
  (Ma et al., 2018). ``entire_space`` tells the losses to do so.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_model.config import Activation, ModelConfig
from mtl_model.features import Batch, FeatureLayer
from mtlrec.feature_spec import FeatureSpec

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp(in_dim: int, hidden: list[int], activation: Activation, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_dim, width))
        layers.append(_ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


def mlp_out_dim(in_dim: int, hidden: list[int]) -> int:
    return hidden[-1] if hidden else in_dim


class Tower(nn.Module):
    """Task head: an MLP and one output unit (a logit or a regression value)."""

    def __init__(
        self, in_dim: int, hidden: list[int], activation: Activation, dropout: float
    ) -> None:
        super().__init__()
        self.body = mlp(in_dim, hidden, activation, dropout)
        self.out = nn.Linear(mlp_out_dim(in_dim, hidden), 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_dim]`` -> ``[B]``."""
        return self.out(self.body(x)).squeeze(-1)


def _last_linear_parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    """Parameters of the last ``nn.Linear`` inside each module (GradNorm's shared layer)."""
    params: list[nn.Parameter] = []
    for module in modules:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        params.extend(linears[-1].parameters() if linears else module.parameters())
    return params


def _feature_layer(spec: FeatureSpec, cfg: ModelConfig) -> FeatureLayer:
    return FeatureLayer(
        spec,
        embedding_dim=cfg.embedding_dim,
        text_projection_dim=cfg.text_projection_dim,
        cross_layers=cfg.cross.num_layers if cfg.cross.enabled else 0,
        cross_low_rank=cfg.cross.low_rank,
        context_dropout=cfg.context_dropout,
    )


def _towers(in_dim: int, count: int, cfg: ModelConfig) -> nn.ModuleList:
    return nn.ModuleList(
        Tower(in_dim, cfg.tower_hidden, cfg.activation, cfg.dropout) for _ in range(count)
    )


class MultiTaskModel(nn.Module):
    """Base class: task metadata, funnel chaining and the module groups transfer needs.

    The models below are the only place that reads ``ModelConfig``: they translate it
    into the plain numbers their building blocks (``FeatureLayer``, ``Tower``,
    ``CGCLevel``, ``mlp``) take.
    """

    entire_space: bool = False

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__()
        self.task_names = [t.name for t in spec.tasks]
        self.task_types = {t.name: t.type for t in spec.tasks}
        self.label_columns = {t.name: t.label_column for t in spec.tasks}
        self.parents = {t.name: t.parent for t in spec.tasks}
        for task in spec.tasks:
            if task.parent is not None and self.task_types[task.parent] != "binary":
                raise ValueError(
                    f"task {task.name!r}: parent {task.parent!r} must be a binary task"
                )
        self.task_order = self._topological_order()

    def _topological_order(self) -> list[str]:
        order: list[str] = []
        pending = list(self.task_names)
        while pending:
            ready = [t for t in pending if self.parents[t] is None or self.parents[t] in order]
            if not ready:
                raise ValueError(f"task parents form a cycle: {pending}")
            order.extend(ready)
            pending = [t for t in pending if t not in ready]
        return order

    def log_probability(self, raw: dict[str, Tensor], task: str) -> Tensor:
        """log p(task = 1) over the entire space, chained through the funnel's parents."""
        log_p = F.logsigmoid(raw[task].float())
        parent = self.parents[task]
        return log_p if parent is None else log_p + self.log_probability(raw, parent)

    def predict(self, batch: Batch) -> dict[str, Tensor]:
        """Unconditional per-task predictions: probabilities (binary) or values (regression)."""
        raw = self.forward(batch)
        out: dict[str, Tensor] = {}
        for task in self.task_order:
            value = raw[task].float()
            if self.task_types[task] == "binary":
                value = torch.sigmoid(value)
            parent = self.parents[task]
            out[task] = value if parent is None else value * out[parent]
        return {task: out[task] for task in self.task_names}

    def shared_modules(self) -> list[nn.Module]:
        """Layers that transfer's ``freeze_shared`` freezes."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Task heads that transfer's ``reinit_heads`` leaves freshly initialised."""
        raise NotImplementedError

    def gradnorm_parameters(self) -> list[nn.Parameter]:
        """The last shared layer, on which GradNorm measures per-task gradient norms."""
        raise NotImplementedError


class SingleTaskModel(MultiTaskModel):
    """Baseline: an independent model per task; nothing is shared."""

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__(spec, cfg)
        layers = [_feature_layer(spec, cfg) for _ in self.task_names]
        self.features = nn.ModuleList(layers)
        dim = layers[0].output_dim
        self.bottoms = nn.ModuleList(
            mlp(dim, cfg.bottom_hidden, cfg.activation, cfg.dropout) for _ in self.task_names
        )
        tower_in = mlp_out_dim(dim, cfg.bottom_hidden)
        self.towers = _towers(tower_in, len(self.task_names), cfg)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``{column: [B]}`` -> ``{task: [B]}``, each task through its own layers."""
        return {
            task: tower(bottom(features(batch)))
            for task, features, bottom, tower in zip(
                self.task_names, self.features, self.bottoms, self.towers, strict=True
            )
        }

    def shared_modules(self) -> list[nn.Module]:
        # Nothing is shared between tasks; the representation layers play that role.
        return [*self.features, *self.bottoms]

    def head_modules(self) -> list[nn.Module]:
        return list(self.towers)

    def gradnorm_parameters(self) -> list[nn.Parameter]:
        raise ValueError("GradNorm needs a shared layer; the single_task baseline has none")


class SharedBottomModel(MultiTaskModel):
    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__(spec, cfg)
        self.features = _feature_layer(spec, cfg)
        self.bottom = mlp(self.features.output_dim, cfg.bottom_hidden, cfg.activation, cfg.dropout)
        tower_in = mlp_out_dim(self.features.output_dim, cfg.bottom_hidden)
        self.towers = _towers(tower_in, len(self.task_names), cfg)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``{column: [B]}`` -> ``{task: [B]}``."""
        shared = self.bottom(self.features(batch))  # [B, H]
        towers = zip(self.task_names, self.towers, strict=True)
        return {task: tower(shared) for task, tower in towers}

    def shared_modules(self) -> list[nn.Module]:
        return [self.features, self.bottom]

    def head_modules(self) -> list[nn.Module]:
        return list(self.towers)

    def gradnorm_parameters(self) -> list[nn.Parameter]:
        return _last_linear_parameters([self.bottom if len(self.bottom) else self.features])


def _mix(gate_logits: Tensor, experts: Tensor) -> Tensor:
    """Softmax-gated mixture: ``[B, E]`` gate logits over ``[B, E, D]`` expert outputs."""
    weights = torch.softmax(gate_logits, dim=-1).unsqueeze(-1)
    return (weights * experts).sum(dim=1)


class MMoEModel(MultiTaskModel):
    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__(spec, cfg)
        self.features = _feature_layer(spec, cfg)
        dim = self.features.output_dim
        self.experts = nn.ModuleList(
            mlp(dim, cfg.expert_hidden, cfg.activation, cfg.dropout) for _ in range(cfg.num_experts)
        )
        self.gates = nn.ModuleList(nn.Linear(dim, cfg.num_experts) for _ in self.task_names)
        expert_dim = mlp_out_dim(dim, cfg.expert_hidden)
        self.towers = _towers(expert_dim, len(self.task_names), cfg)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``{column: [B]}`` -> ``{task: [B]}``."""
        x = self.features(batch)  # [B, D]
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, De]
        return {
            task: tower(_mix(gate(x), experts))
            for task, gate, tower in zip(self.task_names, self.gates, self.towers, strict=True)
        }

    def shared_modules(self) -> list[nn.Module]:
        return [self.features, *self.experts]

    def head_modules(self) -> list[nn.Module]:
        return list(self.towers)

    def gradnorm_parameters(self) -> list[nn.Parameter]:
        return _last_linear_parameters(list(self.experts))


class CGCLevel(nn.Module):
    """One Customized Gate Control level: per-task and shared experts, per-task gates.

    Every level but the last also emits a shared output (gated over all experts)
    that feeds the next level's shared experts.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        *,
        task_experts: int,
        shared_experts: int,
        expert_hidden: list[int],
        activation: Activation,
        dropout: float,
        last: bool,
    ) -> None:
        super().__init__()

        def expert() -> nn.Module:
            return mlp(in_dim, expert_hidden, activation, dropout)

        k, s = task_experts, shared_experts
        self.task_experts = nn.ModuleList(
            nn.ModuleList(expert() for _ in range(k)) for _ in range(num_tasks)
        )
        self.shared_experts = nn.ModuleList(expert() for _ in range(s))
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, k + s) for _ in range(num_tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, num_tasks * k + s)
        self.output_dim = mlp_out_dim(in_dim, expert_hidden)

    def forward(
        self, task_inputs: list[Tensor], shared_input: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        """T task inputs ``[B, in_dim]`` and the shared input ``[B, in_dim]`` -> T task
        outputs ``[B, output_dim]`` and the next level's shared input (``[B, output_dim]``;
        the last level returns its shared input unchanged)."""
        shared = [e(shared_input) for e in self.shared_experts]  # S x [B, output_dim]
        own_all: list[Tensor] = []
        task_outputs: list[Tensor] = []
        for x, experts, gate in zip(task_inputs, self.task_experts, self.task_gates, strict=True):
            own = [e(x) for e in cast(nn.ModuleList, experts)]
            own_all.extend(own)
            task_outputs.append(_mix(gate(x), torch.stack(own + shared, dim=1)))
        if self.shared_gate is None:
            return task_outputs, shared_input
        pooled = _mix(self.shared_gate(shared_input), torch.stack(own_all + shared, dim=1))
        return task_outputs, pooled


class PLEModel(MultiTaskModel):
    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__(spec, cfg)
        self.features = _feature_layer(spec, cfg)
        dim = self.features.output_dim
        levels: list[CGCLevel] = []
        for i in range(cfg.ple_levels):
            level = CGCLevel(
                dim,
                len(self.task_names),
                task_experts=cfg.ple_task_experts,
                shared_experts=cfg.ple_shared_experts,
                expert_hidden=cfg.expert_hidden,
                activation=cfg.activation,
                dropout=cfg.dropout,
                last=i == cfg.ple_levels - 1,
            )
            levels.append(level)
            dim = level.output_dim
        self.levels = nn.ModuleList(levels)
        self.towers = _towers(dim, len(self.task_names), cfg)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``{column: [B]}`` -> ``{task: [B]}``."""
        x = self.features(batch)  # [B, D]
        task_inputs, shared = [x] * len(self.task_names), x
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return {
            task: tower(h)
            for task, tower, h in zip(self.task_names, self.towers, task_inputs, strict=True)
        }

    def _levels(self) -> list[CGCLevel]:
        return cast(list[CGCLevel], list(self.levels))

    def _shared_experts(self) -> list[nn.Module]:
        return [e for level in self._levels() for e in level.shared_experts]

    def shared_modules(self) -> list[nn.Module]:
        return [self.features, *self._shared_experts()]

    def head_modules(self) -> list[nn.Module]:
        return list(self.towers)

    def gradnorm_parameters(self) -> list[nn.Parameter]:
        return _last_linear_parameters(list(self._levels()[-1].shared_experts))


class ESMMModel(MultiTaskModel):
    """Shared embeddings, one MLP tower per task, fitted over the entire impression space."""

    entire_space = True

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__(spec, cfg)
        self.features = _feature_layer(spec, cfg)
        dim = self.features.output_dim
        self.bottoms = nn.ModuleList(
            mlp(dim, cfg.bottom_hidden, cfg.activation, cfg.dropout) for _ in self.task_names
        )
        tower_in = mlp_out_dim(dim, cfg.bottom_hidden)
        self.towers = _towers(tower_in, len(self.task_names), cfg)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``{column: [B]}`` -> ``{task: [B]}`` (one [B, D] feature vector shared)."""
        x = self.features(batch)  # [B, D]
        return {
            task: tower(bottom(x))
            for task, bottom, tower in zip(self.task_names, self.bottoms, self.towers, strict=True)
        }

    def shared_modules(self) -> list[nn.Module]:
        return [self.features]

    def head_modules(self) -> list[nn.Module]:
        return list(self.towers)

    def gradnorm_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())


ARCHITECTURES: dict[str, type[MultiTaskModel]] = {
    "single_task": SingleTaskModel,
    "shared_bottom": SharedBottomModel,
    "mmoe": MMoEModel,
    "ple": PLEModel,
    "esmm": ESMMModel,
}


def build_model(spec: FeatureSpec, cfg: ModelConfig) -> MultiTaskModel:
    return ARCHITECTURES[cfg.architecture](spec, cfg)
