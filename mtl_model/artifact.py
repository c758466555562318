"""Model artifact: weights plus everything needed to rebuild and trust them.

One ``torch.save`` file holding only tensors and strings, so it loads with
``torch.load(weights_only=True)``: the state dict, the feature spec, the model
(and optionally training) config as JSON, the evaluation metrics as JSON, and
optionally the categorical vocabularies (for transfer by value, see
``mtl_model.transfer``), and the gold build it was trained on
(``mtlrec.gold_build.GoldBuildRef``: build id, vocabulary version and content hash, text
fingerprint), which batch scoring checks against the lake. Serving can use a TorchScript
export of ``predict``.

A file that is not an artifact (garbage bytes, an arbitrary pickle, an empty file, a
newer format) raises ``ArtifactError``, an ``InputError``: jobs exit 2 with one line.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn

from mtl_model.architectures import MultiTaskModel, build_model
from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.features import Batch
from mtlrec.errors import InputError
from mtlrec.feature_spec import FeatureSpec
from mtlrec.gold_build import GoldBuildRef

ARTIFACT_FORMAT_VERSION = 1


class ArtifactError(InputError, ValueError):
    """A file that is not a readable model artifact."""


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
    gold_build: GoldBuildRef | None = None

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
    *,
    gold_build: GoldBuildRef | None = None,
) -> ModelArtifact:
    """``gold_build``: the build the model was trained on (``mtlrec.gold_build.read_build``
    of the build id training read); scoring refuses a lake it does not fit."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return ModelArtifact(
        state,
        spec,
        model_config,
        dict(metrics or {}),
        train_config,
        dict(vocabularies or {}),
        gold_build,
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
        "gold_build": artifact.gold_build.to_json() if artifact.gold_build is not None else "",
    }
    partial = target.with_name(target.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, target)


def load_artifact(path: str | Path) -> ModelArtifact:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"model artifact not found: {source}")
    with source.open("rb") as handle:
        return read_artifact(handle, str(source))


def artifact_from_bytes(payload: bytes, name: str = "model") -> ModelArtifact:
    """``load_artifact`` on bytes already read (a broadcast, an object store download)."""
    return read_artifact(io.BytesIO(payload), name)


def read_artifact(handle: BinaryIO, name: str) -> ModelArtifact:
    """The artifact in an open binary file; ``ArtifactError`` naming ``name`` when the
    bytes are not one (always ``weights_only=True``: a pickle of anything but tensors
    and containers is refused, never executed)."""
    try:
        payload = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ArtifactError(
            f"{name} is not a model artifact: not a weights-only torch file (garbage bytes, or "
            f"Python objects other than tensors, which are never loaded)"
        ) from None
    except Exception as exc:  # whatever else the bytes are (garbage, empty), not a model
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise ArtifactError(
            f"{name} is not a model artifact ({type(exc).__name__}: {detail[:200]})"
        ) from None
    if not isinstance(payload, dict):
        raise ArtifactError(f"{name} is not a model artifact (it holds a {type(payload).__name__})")
    version = payload.get("format_version")
    if version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"{name}: artifact format {version!r}, this code reads {ARTIFACT_FORMAT_VERSION}"
        )
    try:
        train_json = payload["train_config"]
        gold_json = payload.get("gold_build", "")
        return ModelArtifact(
            state_dict=payload["state_dict"],
            spec=FeatureSpec.from_json(payload["feature_spec"]),
            model_config=ModelConfig.model_validate_json(payload["model_config"]),
            metrics=json.loads(payload["metrics"]),
            train_config=TrainConfig.model_validate_json(train_json) if train_json else None,
            vocabularies=json.loads(payload["vocabularies"]),
            gold_build=GoldBuildRef.from_json(gold_json) if gold_json else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{name}: incomplete model artifact ({exc})") from None


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
