"""Model artifact round trip and warm-start row mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_model.architectures import build_model
from mtl_model.artifact import (
    ModelArtifact,
    artifact_from_model,
    load_artifact,
    save_artifact,
)
from mtl_model.config import ModelConfig, TrainConfig, TransferConfig
from mtl_model.synthetic import make_funnel_data
from mtl_model.transfer import warm_start

TINY = ModelConfig(
    architecture="shared_bottom",
    embedding_dim=4,
    text_projection_dim=3,
    bottom_hidden=[8],
    tower_hidden=[4],
)


def _source(user_vocab: int = 4, item_vocab: int = 5) -> ModelArtifact:
    data = make_funnel_data(32, user_vocab=user_vocab, item_vocab=item_vocab)
    torch.manual_seed(0)
    model = build_model(data.spec, TINY)
    return artifact_from_model(model, data.spec, TINY)


def test_artifact_round_trip_with_weights_only_load(tmp_path: Path) -> None:
    data = make_funnel_data(64, user_vocab=10, item_vocab=8)
    model = build_model(data.spec, TINY).eval()
    metrics = {"click/auc": 0.75, "purchase/gauc": float("nan")}
    artifact = artifact_from_model(
        model,
        data.spec,
        TINY,
        metrics,
        TrainConfig(epochs=7),
        {"user": [f"u{i}" for i in range(1, 10)]},
    )
    save_artifact(artifact, tmp_path / "run" / "model.pt")
    assert not list((tmp_path / "run").glob("*.partial"))

    raw = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert isinstance(raw["feature_spec"], str) and isinstance(raw["model_config"], str)

    loaded = load_artifact(tmp_path / "run" / "model.pt")
    assert loaded.spec == data.spec
    assert loaded.model_config == TINY
    assert loaded.train_config is not None and loaded.train_config.epochs == 7
    assert loaded.metrics["click/auc"] == 0.75
    assert loaded.vocabularies["user"][0] == "u1"
    rebuilt = loaded.build()
    with torch.no_grad():
        for task, value in model.predict(data.batch).items():
            torch.testing.assert_close(rebuilt.predict(data.batch)[task], value)


def test_load_artifact_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_artifact(tmp_path / "missing.pt")
    torch.save({"format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="artifact format 99"):
        load_artifact(tmp_path / "future.pt")


def test_warm_start_maps_rows_by_vocabulary_value() -> None:
    source = _source()
    source.vocabularies = {"user": ["a", "b", "c"]}
    target_data = make_funnel_data(32, user_vocab=4, item_vocab=7)
    torch.manual_seed(5)
    target = build_model(target_data.spec, TINY)
    report = warm_start(target, source, TransferConfig(), {"user": ["c", "x", "a"]})

    src_user = source.state_dict["features.embeddings.0.weight"]
    user = target.state_dict()["features.embeddings.0.weight"]
    torch.testing.assert_close(user[0], src_user[0])  # OOV row
    torch.testing.assert_close(user[1], src_user[3])  # "c"
    torch.testing.assert_close(user[2], src_user[1:].mean(dim=0))  # "x" is unseen
    torch.testing.assert_close(user[3], src_user[1])  # "a"
    assert report.remapped["features.embeddings.0.weight"] == (3, 1)
    # No vocabulary for item: by index; rows 5 and 6 are beyond the source's table.
    src_item = source.state_dict["features.embeddings.1.weight"]
    item = target.state_dict()["features.embeddings.1.weight"]
    torch.testing.assert_close(item[:5], src_item)
    torch.testing.assert_close(item[5], src_item[1:].mean(dim=0))
    torch.testing.assert_close(item[6], src_item[1:].mean(dim=0))


def test_warm_start_options_unseen_init_reinit_heads_and_freeze() -> None:
    source = _source()
    target_data = make_funnel_data(32, user_vocab=6, item_vocab=5)
    torch.manual_seed(5)
    target = build_model(target_data.spec, TINY)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    cfg = TransferConfig(unseen_rows="init", reinit_heads=True, freeze_shared=True)
    report = warm_start(target, source, cfg)

    state = target.state_dict()
    torch.testing.assert_close(
        state["features.embeddings.0.weight"][4:], fresh["features.embeddings.0.weight"][4:]
    )
    for key in state:
        if key.startswith("towers."):
            torch.testing.assert_close(state[key], fresh[key])
            assert report.skipped[key] == "head re-initialised"
    torch.testing.assert_close(state["bottom.0.weight"], source.state_dict["bottom.0.weight"])
    # Buffers stay the target spec's normalisation.
    torch.testing.assert_close(state["features.dense_mean"], fresh["features.dense_mean"])
    assert "bottom.0.weight" in report.frozen
    assert all(not p.requires_grad for n, p in target.named_parameters() if n in report.frozen)
    assert all(p.requires_grad for n, p in target.named_parameters() if n.startswith("towers."))


def test_warm_start_skips_mismatched_shapes_and_checks_vocabularies() -> None:
    source = _source()
    data = make_funnel_data(32, user_vocab=4, item_vocab=5)
    wide = ModelConfig.model_validate({**TINY.model_dump(), "embedding_dim": 6})
    target = build_model(data.spec, wide)
    report = warm_start(target, source, TransferConfig())
    assert report.skipped["features.embeddings.0.weight"] == "embedding width 4 != 6"
    assert report.skipped["bottom.0.weight"].startswith("shape")

    source.vocabularies = {"user": ["a", "b"]}  # the table has 4 rows: 3 values expected
    with pytest.raises(ValueError, match="source vocabulary of 'user' has 2 values"):
        warm_start(build_model(data.spec, TINY), source, TransferConfig(), {"user": ["a"] * 3})
