"""Warm start from another run's artifact (another market, or a source-task model).

Parameters are copied by state-dict key where the shapes agree; buffers (the
dense normalisation stats) always stay the target spec's. Categorical
embedding tables are matched by *feature name* and mapped row by row:

- by vocabulary value, when both the source artifact and the caller give the
  feature's vocabulary (``values[k]`` is the value of index ``k + 1``; index 0
  is the OOV row and maps to the source's OOV row);
- otherwise by index: target row ``i`` takes source row ``i`` for
  ``i < source vocab_size``. This assumes both vocabularies were built by the
  same deterministic rule, so a shared index means a shared value; rows beyond
  the source's vocabulary are unseen.

Unseen target rows get the mean of the source's in-vocabulary rows (``mean``)
or keep their fresh initialisation (``init``). Options: ``reinit_heads``
leaves the task towers freshly initialised; ``freeze_shared`` stops gradients
to the architecture's shared layers (``MultiTaskModel.shared_modules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mtl_model.architectures import MultiTaskModel
from mtl_model.artifact import ModelArtifact
from mtl_model.config import TransferConfig
from mtl_model.features import FeatureLayer


@dataclass
class TransferReport:
    copied: list[str] = field(default_factory=list)
    remapped: dict[str, tuple[int, int]] = field(
        default_factory=dict, metadata={"doc": "table key -> (rows from source, unseen rows)"}
    )
    skipped: dict[str, str] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


def _embedding_keys(model: nn.Module) -> dict[str, str]:
    """State-dict key of each categorical table -> ``"<layer prefix>|<feature name>"``."""
    keys: dict[str, str] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, FeatureLayer):
            for i, feature in enumerate(module.categorical_names):
                keys[f"{_prefix(module_name)}embeddings.{i}.weight"] = f"{module_name}|{feature}"
    return keys


def _source_embedding_keys(artifact: ModelArtifact, target_keys: dict[str, str]) -> dict[str, str]:
    """``"<layer prefix>|<feature>"`` -> the source state-dict key of that table."""
    source_index = {f.name: i for i, f in enumerate(artifact.spec.categorical)}
    out: dict[str, str] = {}
    for ident in target_keys.values():
        layer, feature = ident.split("|", 1)
        if feature in source_index:
            key = f"{_prefix(layer)}embeddings.{source_index[feature]}.weight"
            if key in artifact.state_dict:
                out[ident] = key
    return out


def _row_sources(
    feature: str,
    target_rows: int,
    source_rows: int,
    source_vocab: list[str] | None,
    target_vocab: list[str] | None,
) -> Tensor:
    """Source row of each target row, -1 where the target value is unseen in the source."""
    if source_vocab is not None and target_vocab is not None:
        for which, vocab, rows in (
            ("source", source_vocab, source_rows),
            ("target", target_vocab, target_rows),
        ):
            if len(vocab) != rows - 1:
                raise ValueError(
                    f"{which} vocabulary of {feature!r} has {len(vocab)} values, "
                    f"its table has {rows} rows (expected rows - 1: row 0 is OOV)"
                )
        position = {value: k + 1 for k, value in enumerate(source_vocab)}
        return torch.tensor([0] + [position.get(v, -1) for v in target_vocab])
    index = torch.arange(target_rows)
    return torch.where(index < source_rows, index, torch.full_like(index, -1))


def warm_start(
    model: MultiTaskModel,
    source: ModelArtifact,
    cfg: TransferConfig,
    target_vocabularies: dict[str, list[str]] | None = None,
) -> TransferReport:
    """Load ``source``'s weights into ``model`` in place; returns what was done."""
    report = TransferReport()
    target_vocabularies = target_vocabularies or {}
    head_keys = {
        f"{_prefix(name)}{param}"
        for name, module in model.named_modules()
        if cfg.reinit_heads and any(module is head for head in model.head_modules())
        for param, _ in module.named_parameters()
    }
    table_keys = _embedding_keys(model)
    source_tables = _source_embedding_keys(source, table_keys)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key in head_keys:
                report.skipped[key] = "head re-initialised"
                continue
            if key in table_keys:
                ident = table_keys[key]
                if ident not in source_tables:
                    report.skipped[key] = "feature absent in source"
                    continue
                src = source.state_dict[source_tables[ident]]
                if src.shape[1] != param.shape[1]:
                    report.skipped[key] = f"embedding width {src.shape[1]} != {param.shape[1]}"
                    continue
                feature = ident.split("|", 1)[1]
                rows = _row_sources(
                    feature,
                    param.shape[0],
                    src.shape[0],
                    source.vocabularies.get(feature),
                    target_vocabularies.get(feature),
                )
                seen = rows >= 0
                param[seen] = src[rows[seen]].to(param.dtype)
                if cfg.unseen_rows == "mean" and src.shape[0] > 1:
                    param[~seen] = src[1:].mean(dim=0).to(param.dtype)
                report.remapped[key] = (int(seen.sum()), int((~seen).sum()))
                continue
            if key not in source.state_dict:
                report.skipped[key] = "absent in source"
                continue
            src = source.state_dict[key]
            if src.shape != param.shape:
                report.skipped[key] = f"shape {tuple(src.shape)} != {tuple(param.shape)}"
            else:
                param.copy_(src)
                report.copied.append(key)
    if cfg.freeze_shared:
        report.frozen = freeze_shared(model)
    return report


def freeze_shared(model: MultiTaskModel) -> list[str]:
    """Stop gradients to the shared layers; returns the frozen parameter names."""
    shared = {id(p) for module in model.shared_modules() for p in module.parameters()}
    frozen = []
    for name, param in model.named_parameters():
        if id(param) in shared:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
