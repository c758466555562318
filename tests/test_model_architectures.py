"""Feature layer and architectures: shapes, dtypes, gradients, freezing, config, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobs.config import PipelineConfig
from mtl_model.architectures import ARCHITECTURES, MultiTaskModel, build_model
from mtl_model.artifact import export_torchscript, load_torchscript
from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.features import FeatureLayer
from mtl_model.losses import build_weighting, task_losses
from mtl_model.synthetic import FunnelData, make_funnel_data
from mtl_model.transfer import freeze_shared
from mtlrec.config import ConfigError, load_config
from mtlrec.feature_spec import CategoricalFeature, FeatureSpec, TaskSpec

TINY = ModelConfig(
    embedding_dim=4,
    text_projection_dim=3,
    bottom_hidden=[8],
    expert_hidden=[6],
    num_experts=2,
    tower_hidden=[4],
    ple_levels=2,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> FunnelData:
    return make_funnel_data(64, user_vocab=10, item_vocab=8)


def _model(architecture: str, data: FunnelData, **extra: object) -> MultiTaskModel:
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate({**TINY.model_dump(), "architecture": architecture, **extra})
    return build_model(data.spec, cfg)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_forward_and_predict_shapes_dtypes_ranges(architecture: str, data: FunnelData) -> None:
    model = _model(architecture, data)
    raw = model(data.batch)
    pred = model.predict(data.batch)
    assert list(raw) == list(pred) == ["click", "add_to_cart", "purchase", "purchase_value"]
    for out in (*raw.values(), *pred.values()):
        assert out.shape == (64,)
        assert out.dtype == torch.float32
    for task in ("click", "add_to_cart", "purchase"):
        assert ((pred[task] >= 0) & (pred[task] <= 1)).all()
    # Child probabilities are chained through the funnel: never above their parent's.
    assert (pred["purchase"] <= pred["click"]).all()
    expected_value = raw["purchase_value"] * pred["purchase"]
    torch.testing.assert_close(pred["purchase_value"], expected_value)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_gradients_reach_every_parameter(architecture: str, data: FunnelData) -> None:
    model = _model(architecture, data, cross={"enabled": True, "num_layers": 1, "low_rank": 2})
    weighting = build_weighting(model, TrainConfig().weighting)
    losses = task_losses(model, model(data.batch), data.batch, "batch")
    weighting.combine(losses, lambda: []).backward()
    missing = [
        name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_frozen_shared_layers_get_no_gradient(architecture: str, data: FunnelData) -> None:
    model = _model(architecture, data)
    frozen = set(freeze_shared(model))
    assert any(".embeddings." in name for name in frozen)
    losses = task_losses(model, model(data.batch), data.batch, "batch")
    torch.stack(list(losses.values())).sum().backward()
    for name, param in model.named_parameters():
        if name in frozen:
            assert param.grad is None, name
        else:
            assert param.grad is not None, name
    heads = {id(p) for head in model.head_modules() for p in head.parameters()}
    assert all(id(p) not in heads for n, p in model.named_parameters() if n in frozen)


def test_feature_layer_maps_out_of_range_indices_to_oov_and_normalises(data: FunnelData) -> None:
    layer = FeatureLayer(data.spec, embedding_dim=TINY.embedding_dim, text_projection_dim=0)
    batch = {k: v[:4].clone() for k, v in data.batch.items()}
    batch["user"] = torch.tensor([0, 10, 999, -3])  # vocab_size is 10: all but row 0 invalid
    batch["price"] = torch.tensor([5.0, 7.0, float("nan"), 1.0])
    out = layer(batch)
    user_rows = out[:, :4]
    for row in range(1, 4):
        torch.testing.assert_close(user_rows[row], layer.tables()[0].weight[0])
    price = out[:, 8]  # after two 4-wide embeddings
    torch.testing.assert_close(price, torch.tensor([0.0, 1.0, 0.0, -2.0]))
    assert layer.output_dim == out.shape[1] == 4 + 4 + 2 + 4


def test_context_dropout_hides_a_rows_slot_features_together_and_only_in_training() -> None:
    spec = FeatureSpec(
        categorical=[
            CategoricalFeature(name="cat_page", vocab_size=3, unknown_at_scoring=True),
            CategoricalFeature(name="cat_item", vocab_size=3),
            CategoricalFeature(name="cat_hour", vocab_size=3, unknown_at_scoring=True),
        ],
        tasks=[TaskSpec(name="click", type="binary", label_column="click")],
    )
    torch.manual_seed(0)
    layer = FeatureLayer(spec, embedding_dim=2, text_projection_dim=0, context_dropout=0.3)
    rows = 4000
    batch = {name: torch.ones(rows, dtype=torch.long) for name in spec.feature_columns()}

    def unknown(out: torch.Tensor, feature: int) -> torch.Tensor:  # [B] bool: row 0 used
        part = out[:, 2 * feature : 2 * feature + 2]
        return (part == layer.tables()[feature].weight[0]).all(dim=1)

    out = layer.train()(batch)
    page, item, hour = (unknown(out, i) for i in range(3))
    assert torch.equal(page, hour)  # one draw per row for all of its slot features
    assert not item.any()  # features batch scoring knows are never hidden
    assert 0.27 < page.float().mean().item() < 0.33  # ~ Binomial(4000, 0.3): sd 0.007
    assert not unknown(layer.eval()(batch), 0).any()


def test_parent_must_be_binary(data: FunnelData) -> None:
    tasks = [
        t.model_copy(update={"parent": "purchase_value"}) if t.name == "purchase" else t
        for t in data.spec.tasks
    ]
    spec = data.spec.model_copy(update={"tasks": tasks})
    with pytest.raises(ValueError, match="parent 'purchase_value' must be a binary task"):
        build_model(spec, TINY)


def test_torchscript_predict_matches_eager(data: FunnelData, tmp_path: Path) -> None:
    model = _model("ple", data, cross={"enabled": True}).eval()
    export_torchscript(model, data.spec, data.batch, tmp_path / "model.pt")
    scripted = load_torchscript(tmp_path / "model.pt")
    other = make_funnel_data(37, user_vocab=10, item_vocab=8, sample_seed=5)  # new batch size
    features = {c: other.batch[c] for c in data.spec.feature_columns()}
    with torch.no_grad():
        expected = model.predict(other.batch)
        got = scripted(features)
    assert set(got) == set(expected)
    for task in expected:
        torch.testing.assert_close(got[task], expected[task])


def test_local_yaml_model_and_train_sections_validate() -> None:
    cfg = load_config(PipelineConfig)
    assert cfg.model.architecture in ARCHITECTURES
    assert cfg.train.epochs > 0


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.architecture=transformer", "model.architecture"),
        ("model.expert_hidden=[]", "model.expert_hidden"),
        ("train.weighting.strategy=magic", "train.weighting.strategy"),
        ("train.lr=-1", "train.lr"),
        ("train.weighting.task_weights={click: -1}", "train.weighting.task_weights.click"),
        ("train.early_stopping.patienc=3", "train.early_stopping.patienc"),
    ],
)
def test_bad_model_config_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(PipelineConfig, overrides=[override])
