"""The training state after an epoch: one typed, versioned record, saved and loaded here.

``mtl_model.loop.fit`` produces a ``TrainState`` after every epoch and resumes from one;
the Ray worker attaches it to each report as its checkpoint, and the driver reads the
final one to write the run's outputs. The file holds only tensors and plain values, so
it loads with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlrec.errors import InputError

STATE_FILE = "train_state.pt"
FORMAT_VERSION = 1
"""Bumped whenever a field changes; a record of another version is refused, not guessed at."""

Weights = dict[str, Tensor]


class CheckpointError(InputError, ValueError):
    """A checkpoint file that is not a training state this code can continue from."""


def copy_weights(module: nn.Module) -> Weights:
    """A detached CPU copy of ``module``'s state: later steps never change it."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@dataclass
class TrainState:
    """Everything a run needs to continue after ``epoch``, or to finish."""

    epoch: int
    """The last completed epoch (-1: none yet)."""
    model: Weights
    best_model: Weights
    """The weights of the best epoch so far (``EarlyStopping``), a copy."""
    weighting: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    early_stopping: dict[str, Any]
    history: list[dict[str, float]]
    """One record per epoch: ``epoch``, ``lr``, ``train/...`` and ``val/<task>/<metric>``."""
    test: dict[str, float] | None = None
    """Set on the final record only: the best weights' metrics on the test split."""

    @property
    def best_epoch(self) -> int:
        return int(self.early_stopping["best_epoch"])

    def best_record(self) -> dict[str, float]:
        """The history record of the best epoch (the last one if none improved)."""
        if 0 <= self.best_epoch < len(self.history):
            return self.history[self.best_epoch]
        return self.history[-1] if self.history else {}

    def best_val_metrics(self) -> dict[str, float]:
        """The best epoch's validation metrics, named as ``evaluate`` names them."""
        return {
            k.removeprefix("val/"): v for k, v in self.best_record().items() if k.startswith("val/")
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / STATE_FILE
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        torch.save({"format_version": FORMAT_VERSION, **record}, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TrainState:
        """The state saved under ``directory``; raises on a corrupt, partial or foreign file."""
        path = Path(directory) / STATE_FILE
        raw = torch.load(path, map_location="cpu", weights_only=True)
        version = raw.pop("format_version", None) if isinstance(raw, dict) else None
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} is a training state of format {version!r}; this code reads format "
                f"{FORMAT_VERSION}: start a new run"
            )
        return cls(**raw)
