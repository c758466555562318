"""Masked per-task losses and the loss-weighting strategies."""

from __future__ import annotations

import pytest
import torch

from mtl_model.architectures import MultiTaskModel, build_model
from mtl_model.config import ModelConfig, TrainConfig, WeightingConfig
from mtl_model.loop import build_optimizer, train_epoch
from mtl_model.losses import (
    DWAWeighting,
    GradNormWeighting,
    UncertaintyWeighting,
    build_weighting,
    task_losses,
    task_mask,
)
from mtl_model.synthetic import FunnelData, make_funnel_data

TINY = ModelConfig(
    embedding_dim=4,
    text_projection_dim=3,
    bottom_hidden=[8],
    expert_hidden=[6],
    num_experts=2,
    tower_hidden=[4],
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> FunnelData:
    return make_funnel_data(256, user_vocab=10, item_vocab=8)


def _model(architecture: str, data: FunnelData) -> MultiTaskModel:
    torch.manual_seed(0)
    return build_model(data.spec, TINY.model_copy(update={"architecture": architecture}))


def _scramble_where(batch: dict[str, torch.Tensor], rows: torch.Tensor, column: str) -> dict:
    changed = dict(batch)
    values = batch[column].clone()
    values[rows] = torch.where(values[rows] > 0, 0.0, 1.0) if column != "purchase_value" else 7.0
    changed[column] = values
    return changed


@pytest.mark.parametrize("architecture", ["mmoe", "esmm"])
def test_conditional_losses_ignore_rows_where_the_parent_did_not_happen(
    architecture: str, data: FunnelData
) -> None:
    model = _model(architecture, data)
    batch = data.batch
    unclicked = batch["click"] == 0
    # purchase_value's parent is purchase; these rows have no purchase, so no value is defined.
    unpurchased = batch["purchase"] == 0
    raw = model(batch)
    base = task_losses(model, raw, batch, "batch")
    cart = task_losses(model, raw, _scramble_where(batch, unclicked, "add_to_cart"), "batch")
    value = task_losses(
        model, raw, _scramble_where(batch, unpurchased, "purchase_value"), "batch"
    )
    torch.testing.assert_close(value["purchase_value"], base["purchase_value"])
    if architecture == "esmm":
        # Entire space: pCTCVR is fitted on every impression, so these labels count.
        assert not torch.allclose(cart["add_to_cart"], base["add_to_cart"])
        assert task_mask(model, batch, "add_to_cart").all()
    else:
        torch.testing.assert_close(cart["add_to_cart"], base["add_to_cart"])
        assert torch.equal(task_mask(model, batch, "add_to_cart"), ~unclicked)


def test_masked_loss_equals_the_loss_on_the_defined_rows_only(data: FunnelData) -> None:
    model = _model("shared_bottom", data)
    batch = dict(data.batch)
    click = batch["click"].clone()
    click[:10] = float("nan")  # undefined labels are ignored too
    batch["click"] = click
    raw = model(batch)
    losses = task_losses(model, raw, batch, "parent_positives")
    clicked = batch["click"] == 1
    expected_purchase = torch.nn.functional.binary_cross_entropy_with_logits(
        raw["purchase"][clicked], batch["purchase"][clicked]
    )
    torch.testing.assert_close(losses["purchase"], expected_purchase)
    defined = torch.isfinite(click)
    expected_click = torch.nn.functional.binary_cross_entropy_with_logits(
        raw["click"][defined], click[defined]
    )
    torch.testing.assert_close(losses["click"], expected_click)


def test_a_batch_without_defined_rows_gives_zero_loss_and_zero_gradient(data: FunnelData) -> None:
    model = _model("mmoe", data)
    batch = {k: v[data.batch["click"] == 0][:16] for k, v in data.batch.items()}
    raw = model(batch)
    losses = task_losses(model, raw, batch, "batch")
    assert losses["purchase"].item() == 0.0
    losses["purchase"].backward()
    tower = model.head_modules()[model.task_names.index("purchase")]
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in tower.parameters())


def test_esmm_child_loss_is_cross_entropy_of_the_chained_probability(data: FunnelData) -> None:
    model = _model("esmm", data)
    raw = model(data.batch)
    p_ctcvr = torch.sigmoid(raw["click"]) * torch.sigmoid(raw["purchase"])
    expected = torch.nn.functional.binary_cross_entropy(p_ctcvr, data.batch["purchase"])
    for scale in ("batch", "parent_positives"):  # no parent mask: the scale does not apply
        torch.testing.assert_close(task_losses(model, raw, data.batch, scale)["purchase"], expected)


def test_batch_scale_divides_a_child_loss_by_the_batch_not_the_parents_positives(
    data: FunnelData,
) -> None:
    model = _model("mmoe", data)
    raw = model(data.batch)
    by_batch = task_losses(model, raw, data.batch, "batch")
    by_parent = task_losses(model, raw, data.batch, "parent_positives")
    clicked = data.batch["click"] == 1
    click_rate = clicked.float().mean()
    assert 0 < click_rate < 1
    # A child's conditional mean, scaled by its parent's positive rate in the batch ...
    for child in ("add_to_cart", "purchase"):
        torch.testing.assert_close(by_batch[child], by_parent[child] * click_rate)
    # ... a grandchild by its parent's (purchase given click given impression) ...
    purchase_rate = (data.batch["purchase"] == 1).float().mean()
    torch.testing.assert_close(
        by_batch["purchase_value"], by_parent["purchase_value"] * purchase_rate
    )
    # ... and a task without a parent is the same under both.
    torch.testing.assert_close(by_batch["click"], by_parent["click"])


def _train(model: MultiTaskModel, data: FunnelData, strategy: str, epochs: int = 1) -> tuple:
    cfg = TrainConfig(
        lr=0.01,
        weighting={"strategy": strategy, "lr": 0.05},
        schedule={"kind": "constant", "warmup_steps": 0},
    )
    weighting = build_weighting(model, cfg.weighting)
    optimizer = build_optimizer(model, weighting, cfg)
    history = [
        train_epoch(model, data.batches(32, seed=e), optimizer, weighting, cfg)
        for e in range(epochs)
    ]
    return weighting, history


def test_uncertainty_weights_move_during_training(data: FunnelData) -> None:
    model = _model("shared_bottom", data)
    weighting, _ = _train(model, data, "uncertainty")
    assert isinstance(weighting, UncertaintyWeighting)
    assert weighting.log_vars.abs().min().item() > 1e-3
    weights = weighting.current_weights()
    assert len(set(round(w, 4) for w in weights.values())) == len(weights)


def test_gradnorm_weights_move_and_keep_their_sum(data: FunnelData) -> None:
    model = _model("mmoe", data)
    weighting, _ = _train(model, data, "gradnorm")
    assert isinstance(weighting, GradNormWeighting)
    weights, start = weighting.weights.detach(), weighting.base_weights
    assert (weights - start).abs().max().item() > 0.01
    assert weights.sum().item() == pytest.approx(start.sum().item(), rel=1e-5)


def test_gradnorm_needs_a_shared_layer(data: FunnelData) -> None:
    with pytest.raises(ValueError, match="single_task baseline has none"):
        build_weighting(_model("single_task", data), WeightingConfig(strategy="gradnorm"))


def test_dwa_weights_follow_the_ratio_of_the_last_two_epoch_losses() -> None:
    tasks = ["a", "b"]
    weighting = DWAWeighting(tasks, WeightingConfig(strategy="dwa", dwa_temperature=1.0))
    weighting.end_epoch({"a": 1.0, "b": 1.0})
    assert weighting.current_weights() == {"a": 1.0, "b": 1.0}
    weighting.end_epoch({"a": 0.5, "b": 1.0})  # a improves, b stalls: b gets more weight
    rates = torch.tensor([0.5, 1.0])
    expected = 2 * torch.softmax(rates, dim=0)
    assert weighting.current_weights() == pytest.approx(
        dict(zip(tasks, expected.tolist(), strict=True))
    )
    resumed = DWAWeighting(tasks, WeightingConfig(strategy="dwa", dwa_temperature=1.0))
    resumed.load_state_dict(weighting.state_dict())  # checkpoints carry DWA's loss history
    resumed.end_epoch({"a": 0.5, "b": 0.5})
    weighting.end_epoch({"a": 0.5, "b": 0.5})
    assert resumed.current_weights() == weighting.current_weights()


def test_dwa_runs_inside_the_training_loop(data: FunnelData) -> None:
    _, history = _train(_model("ple", data), data, "dwa", epochs=3)
    assert set(history[-1].task_weights) == set(data.spec.label_columns())
    assert history[-1].task_weights != dict.fromkeys(history[-1].task_weights, 1.0)


def test_fixed_weights_reject_unknown_tasks(data: FunnelData) -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        build_weighting(_model("mmoe", data), WeightingConfig(task_weights={"clik": 2.0}))


def test_regression_tasks_default_to_regression_weight_unless_named(data: FunnelData) -> None:
    model = _model("mmoe", data)
    assert model.task_types["purchase_value"] == "regression"
    default = build_weighting(model, WeightingConfig())
    assert default.current_weights() == {
        "click": 1.0, "add_to_cart": 1.0, "purchase": 1.0, "purchase_value": pytest.approx(0.1)
    }
    named = build_weighting(
        model, WeightingConfig(regression_weight=0.5, task_weights={"purchase_value": 2.0})
    )
    assert named.current_weights()["purchase_value"] == 2.0
    assert build_weighting(model, WeightingConfig(regression_weight=0.5)).current_weights()[
        "purchase_value"
    ] == 0.5
