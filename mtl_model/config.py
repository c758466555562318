"""Configuration of the model (section ``model``) and of training (section ``train``).

Every knob of the architectures, losses, weighting, schedule, transfer and
distillation is a typed field here; code never hard-codes one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveInt

from mtlrec.config import StrictModel

Architecture = Literal["single_task", "shared_bottom", "mmoe", "ple", "esmm"]
Activation = Literal["relu", "gelu", "silu"]
ChildLossScale = Literal["batch", "parent_positives"]


class CrossConfig(StrictModel):
    """Explicit feature crosses (DCN-v2) applied to the concatenated feature vector."""

    enabled: bool = False
    num_layers: int = Field(2, gt=0)
    low_rank: int | None = Field(
        None, gt=0, description="Rank of the factorised cross matrix; None = full rank."
    )


class ModelConfig(StrictModel):
    architecture: Architecture = "mmoe"
    embedding_dim: int | None = Field(
        None,
        gt=0,
        description="Width of every categorical embedding; None = the spec's per "
        "feature suggestion.",
    )
    text_projection_dim: int = Field(
        16, ge=0, description="Linear projection of each pretrained embedding; 0 = use it raw."
    )
    cross: CrossConfig = Field(default_factory=CrossConfig)
    bottom_hidden: list[PositiveInt] = Field(
        default_factory=lambda: [128, 64],
        description="Shared bottom (shared_bottom), per-task bottoms (single_task, esmm).",
    )
    expert_hidden: list[PositiveInt] = Field(
        default_factory=lambda: [64],
        min_length=1,
        description="Hidden widths of each MMoE / PLE expert.",
    )
    num_experts: int = Field(4, gt=0, description="MMoE experts.")
    ple_levels: int = Field(2, gt=0, description="Stacked CGC levels in PLE.")
    ple_shared_experts: int = Field(2, gt=0)
    ple_task_experts: int = Field(1, gt=0)
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    context_dropout: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of training rows whose slot features (the spec's "
        "unknown_at_scoring: page, position, device, hour) are all set to unknown (index "
        "0) together. The model then learns p(task | user, item, slot unknown) as the "
        "logged average over slots, which batch scoring uses: it cannot know where a "
        "recommendation will be shown. 0: no row is hidden, and scoring draws each user's "
        "slot from their logged impressions instead. Demo test day, one seed, context "
        "dropout 0 / 0.1 / 0.2: scoring path's mean p(click) 0.913 / 0.944 / 0.963 of the "
        "logged rows'; test click AUC .8083 / .8086 / .8069 (95% CI about +-0.013).",
    )


class WeightingConfig(StrictModel):
    """How per-task losses are combined into one objective."""

    strategy: Literal["fixed", "uncertainty", "gradnorm", "dwa"] = "fixed"
    task_weights: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="Fixed weights (and GradNorm / DWA starting scale); a task left out gets "
        "1 (binary) or regression_weight (regression).",
    )
    child_loss_scale: ChildLossScale = Field(
        "batch",
        description="Scale of a conditional (child) task's loss, e.g. add_to_cart given "
        "click. batch: summed over the parent's positives, divided by the whole batch, so "
        "every impression weighs the same in every task. parent_positives: the mean over "
        "the parent's positives only (~3.6 % of a demo batch), which gives those rows large "
        "gradients in the shared layers. Measured (docs/model_quality.md; quick benchmark "
        "dataset, 3 seeds, loop.fit): test click AUC with batch vs parent_positives: "
        "shared_bottom .740 vs .711, MMoE .740 vs .725, PLE .741 vs .729, single-task "
        ".740; add_to_cart and purchase 0.01-0.04 lower, inside their bootstrap intervals "
        "(55 carts, 19 purchases).",
    )
    regression_weight: NonNegativeFloat = Field(
        0.1,
        description="Default weight of a regression task. Its squared error on log1p(value) "
        "starts about ten times larger than a binary cross-entropy; at weight 1 it steers "
        "the shared layers early on and can invert the binary tasks' ranking for the first "
        "epoch (demo data, MMoE, 1 epoch: test click AUC 0.37 at weight 1, 0.73 at 0.1).",
    )
    lr: float = Field(
        0.025, gt=0, description="Learning rate of learned weights (uncertainty, GradNorm)."
    )
    gradnorm_alpha: float = Field(1.5, ge=0, description="GradNorm restoring-force strength.")
    dwa_temperature: float = Field(2.0, gt=0)


class ScheduleConfig(StrictModel):
    kind: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    total_steps: int | None = Field(
        None, gt=0, description="Cosine horizon; None = epochs x steps per epoch (job computes)."
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a share of lr.")
    step_every: int = Field(1000, gt=0, description="Step schedule: decay every N steps.")
    step_gamma: float = Field(0.5, gt=0, le=1)


class EarlyStoppingConfig(StrictModel):
    metric: str = Field("click/auc", description="Key of evaluate()'s result to watch.")
    mode: Literal["max", "min"] = "max"
    patience: int = Field(2, ge=0, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0)


class TransferConfig(StrictModel):
    """Warm start from another run's artifact."""

    source: str | None = Field(None, description="Path of the source model artifact.")
    freeze_shared: bool = False
    reinit_heads: bool = False
    unseen_rows: Literal["mean", "init"] = Field(
        "mean",
        description="Target vocabulary rows absent in the source: mean of the source's "
        "rows, or keep the fresh initialisation.",
    )


class DistillConfig(StrictModel):
    teacher: str | None = Field(None, description="Path of the teacher's model artifact.")
    alpha: float = Field(
        0.5, ge=0, le=1, description="Share of the hard-label loss; 1 - alpha goes to soft targets."
    )
    temperature: float = Field(2.0, gt=0, description="Softening of binary teacher logits.")


class TrainConfig(StrictModel):
    seed: int = 0
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(1024, gt=0)
    eval_batch_size: int = Field(4096, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only.")
    grad_clip_norm: float | None = Field(1.0, gt=0, description="None disables clipping.")
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="Autocast dtype; fp16 needs a GPU (it uses a gradient scaler)."
    )
    log_every_steps: int = Field(100, gt=0)
    gauc_group_column: str = Field("user_id", description="Batch column that groups GAUC.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
