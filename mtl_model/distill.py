"""Distillation: a small student learns from a trained teacher's per-task soft targets.

Per task the student's loss is ``alpha * hard + (1 - alpha) * soft``:
- hard: the ordinary masked task loss on the labels (``losses.task_losses``);
- soft, binary: cross-entropy between the student's and the teacher's raw
  (conditional) probabilities softened by ``temperature``, scaled by T^2 so its
  gradient keeps its size as T changes (Hinton et al., 2015); on every row —
  the teacher's conditional rate is defined on every impression, so it teaches
  even where the label is masked;
- soft, regression: squared error to the teacher's conditional value, on every row.

``compare_student_teacher`` reports what the benchmark needs: parameter
counts, the student/teacher forward time ratio and the AUC each task keeps.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl_model.architectures import MultiTaskModel
from mtl_model.config import ChildLossScale, DistillConfig
from mtl_model.features import Batch
from mtl_model.losses import task_losses
from mtl_model.metrics import MetricAccumulator
from mtlrec.feature_spec import FeatureSpec


def distillation_losses(
    student: MultiTaskModel,
    student_raw: dict[str, Tensor],
    teacher_raw: dict[str, Tensor],
    batch: Batch,
    cfg: DistillConfig,
    child_loss_scale: ChildLossScale,
) -> dict[str, Tensor]:
    hard = task_losses(student, student_raw, batch, child_loss_scale)
    t = cfg.temperature
    out: dict[str, Tensor] = {}
    for task in student.task_names:
        s_out, t_out = student_raw[task].float(), teacher_raw[task].detach().float()
        if student.task_types[task] == "binary":
            soft = F.binary_cross_entropy_with_logits(s_out / t, torch.sigmoid(t_out / t)) * t * t
        else:
            soft = F.mse_loss(s_out, t_out)
        out[task] = cfg.alpha * hard[task] + (1 - cfg.alpha) * soft
    return out


@dataclass(frozen=True)
class DistillationReport:
    teacher_parameters: int
    student_parameters: int
    parameter_ratio: float
    forward_time_ratio: float
    teacher_auc: dict[str, float]
    student_auc: dict[str, float]
    auc_kept: dict[str, float]
    """Per binary task: the student's AUC lift over 0.5 as a share of the teacher's."""


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compare_student_teacher(
    teacher: MultiTaskModel,
    student: MultiTaskModel,
    batches: Iterable[Batch],
    spec: FeatureSpec,
    timing_rounds: int = 3,
) -> DistillationReport:
    """Evaluate both on the same batches; time their ``predict`` alternately, same data."""
    cached = list(batches)
    teacher.eval()
    student.eval()
    metrics = {}
    elapsed = {"teacher": 0.0, "student": 0.0}
    with torch.no_grad():
        for name, model in (("teacher", teacher), ("student", student)):
            acc = MetricAccumulator(spec)
            for batch in cached:
                acc.update(model.predict(batch), batch)
            metrics[name] = acc.compute()
        # Alternating rounds expose both models to the same machine noise.
        for _ in range(timing_rounds):
            for name, model in (("teacher", teacher), ("student", student)):
                start = time.perf_counter()
                for batch in cached:
                    model.predict(batch)
                elapsed[name] += time.perf_counter() - start
    binary = [t.name for t in spec.tasks if t.type == "binary"]
    teacher_auc = {t: metrics["teacher"][f"{t}/auc"] for t in binary}
    student_auc = {t: metrics["student"][f"{t}/auc"] for t in binary}
    n_teacher, n_student = count_parameters(teacher), count_parameters(student)
    return DistillationReport(
        teacher_parameters=n_teacher,
        student_parameters=n_student,
        parameter_ratio=n_student / n_teacher,
        forward_time_ratio=elapsed["student"] / elapsed["teacher"],
        teacher_auc=teacher_auc,
        student_auc=student_auc,
        auc_kept={t: (student_auc[t] - 0.5) / (teacher_auc[t] - 0.5) for t in binary},
    )
