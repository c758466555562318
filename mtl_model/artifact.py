"""Model artifact: weights plus everything needed to rebuild and trust them.

One ``torch.save`` file holding only tensors and strings, so it loads with
``torch.load(weights_only=True)``: the state dict, the feature spec, the model
(and optionally training) config as JSON, the evaluation metrics as JSON, and
optionally the categorical vocabularies (for transfer by value, see
``mtl_model.transfer``). Serving can use a TorchScript export of ``predict``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mtl_model.architectures import MultiTaskModel, build_model
from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.features import Batch
from mtlrec.feature_spec import FeatureSpec

ARTIFACT_FORMAT_VERSION = 1


@dataclass
class ModelArtifact:
    state_dict: dict[str, Tensor]
    spec: FeatureSpec
    model_config: ModelConfig
    metrics: dict[str, float] = field(default_factory=dict)
    train_config: TrainConfig | None = None
    vocabularies: dict[str, list[str]] = field(
        default_factory=dict,
        metadata={"doc": "feature -> values of indices 1..vocab_size-1 (index 0 is OOV)"},
    )

    def build(self) -> MultiTaskModel:
        """The model with these weights, in eval mode."""
        model = build_model(self.spec, self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()


def artifact_from_model(
    model: MultiTaskModel,
    spec: FeatureSpec,
    model_config: ModelConfig,
    metrics: dict[str, float] | None = None,
    train_config: TrainConfig | None = None,
    vocabularies: dict[str, list[str]] | None = None,
) -> ModelArtifact:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return ModelArtifact(
        state, spec, model_config, dict(metrics or {}), train_config, dict(vocabularies or {})
    )


def save_artifact(artifact: ModelArtifact, path: str | Path) -> None:
    """Write atomically: a crash never leaves a half-written artifact at ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": ARTIFACT_FORMAT_VERSION,
        "state_dict": artifact.state_dict,
        "feature_spec": artifact.spec.to_json(),
        "model_config": artifact.model_config.model_dump_json(),
        "train_config": (
            artifact.train_config.model_dump_json() if artifact.train_config is not None else ""
        ),
        "metrics": json.dumps(artifact.metrics, sort_keys=True),
        "vocabularies": json.dumps(artifact.vocabularies, sort_keys=True),
    }
    partial = target.with_name(target.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, target)


def load_artifact(path: str | Path) -> ModelArtifact:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"model artifact not found: {source}")
    payload = torch.load(source, map_location="cpu", weights_only=True)
    version = payload.get("format_version")
    if version != ARTIFACT_FORMAT_VERSION:
        raise ValueError(
            f"{source}: artifact format {version!r}, this code reads {ARTIFACT_FORMAT_VERSION}"
        )
    train_json = payload["train_config"]
    return ModelArtifact(
        state_dict=payload["state_dict"],
        spec=FeatureSpec.from_json(payload["feature_spec"]),
        model_config=ModelConfig.model_validate_json(payload["model_config"]),
        metrics=json.loads(payload["metrics"]),
        train_config=TrainConfig.model_validate_json(train_json) if train_json else None,
        vocabularies=json.loads(payload["vocabularies"]),
    )


class _PredictPath(nn.Module):
    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.model.predict(batch)


def export_torchscript(
    model: MultiTaskModel, spec: FeatureSpec, example: Batch, path: str | Path
) -> None:
    """Trace ``predict`` on the spec's feature columns of ``example`` and save it.

    The graph has no data-dependent control flow, so the trace is valid for any
    batch size. The saved module takes ``{column: tensor}`` and returns ``{task: tensor}``.
    """
    inputs = {c: example[c].cpu() for c in spec.feature_columns()}
    # A CPU copy in eval mode: the caller's model keeps its device and mode.
    serving = _PredictPath(copy.deepcopy(model)).cpu().eval()
    with torch.no_grad():
        traced = torch.jit.trace(serving, (inputs,), strict=False)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    torch.jit.save(traced, str(partial))
    os.replace(partial, target)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path), map_location="cpu")
