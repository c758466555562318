"""Two gloo ranks in real processes: DDP training on unequal shards, exact metric merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from mtl_model.architectures import build_model
from mtl_model.config import ModelConfig, TrainConfig, WeightingConfig
from mtl_model.loop import build_optimizer, evaluate, train_epoch
from mtl_model.losses import build_weighting
from mtl_model.synthetic import make_funnel_data

WORLD = 2
ROWS = 600
SHARD_END = {0: (0, 400), 1: (400, ROWS)}  # unequal shards: 8 and 4 batches of 50
MODEL = ModelConfig(
    architecture="mmoe",
    embedding_dim=4,
    text_projection_dim=3,
    expert_hidden=[6],
    num_experts=2,
    tower_hidden=[4],
)
TRAIN = TrainConfig(lr=0.01, schedule={"warmup_steps": 2})
STRATEGIES = ["uncertainty", "gradnorm"]  # learned loss weights, kept outside the DDP module


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        data = make_funnel_data(ROWS, user_vocab=10, item_vocab=8)
        start, end = SHARD_END[rank]
        shard = {k: v[start:end] for k, v in data.batch.items()}
        batches = [{k: v[i : i + 50] for k, v in shard.items()} for i in range(0, end - start, 50)]
        steps = torch.tensor([len(batches)])
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        results = {}
        for strategy in STRATEGIES:
            torch.manual_seed(rank)  # DDP broadcasts rank 0's initial weights
            model = build_model(data.spec, MODEL)
            ddp = DistributedDataParallel(model)
            cfg = TRAIN.model_copy(update={"weighting": WeightingConfig(strategy=strategy)})
            weighting = build_weighting(model, cfg.weighting)
            optimizer = build_optimizer(ddp, weighting, cfg)
            stats = train_epoch(ddp, batches, optimizer, weighting, cfg, max_steps=int(steps))
            eval_batches = [
                {k: v[i : i + 64] for k, v in shard.items()} for i in range(0, end - start, 64)
            ]
            results[strategy] = {
                "steps": stats.steps,
                "metrics": evaluate(ddp, eval_batches, data.spec),
                "loss_weights": [p.tolist() for p in weighting.parameters()],
                "task_losses": stats.task_losses,
                "checksum": sum(p.double().sum().item() for p in model.parameters()),
            }
            if rank == 0:
                torch.save(model.state_dict(), Path(out_dir, f"{strategy}.pt"))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ddp_on_unequal_shards_stays_in_sync_and_metrics_merge_exactly(
    strategy: str, two_rank_run: Path
) -> None:
    ranks = [json.loads((two_rank_run / f"rank{r}.json").read_text())[strategy] for r in range(2)]
    assert [r["steps"] for r in ranks] == [4, 4]
    # Learned loss weights live outside DDP; the loop all-reduces their gradients.
    assert ranks[0]["loss_weights"] == ranks[1]["loss_weights"]
    initial = 1.0 if strategy == "gradnorm" else 0.0  # GradNorm weights, uncertainty log vars
    assert max(abs(v - initial) for v in ranks[0]["loss_weights"][0]) > 1e-4
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["task_losses"] == ranks[1]["task_losses"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]

    # The merged metrics are those of one process evaluating all rows.
    data = make_funnel_data(ROWS, user_vocab=10, item_vocab=8)
    model = build_model(data.spec, MODEL)
    model.load_state_dict(torch.load(two_rank_run / f"{strategy}.pt", weights_only=True))
    whole = evaluate(model, data.batches(128), data.spec)
    merged = ranks[0]["metrics"]
    assert set(merged) == set(whole)
    for key, value in whole.items():
        assert merged[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return out
