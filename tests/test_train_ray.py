"""jobs.train on local Ray with CPU workers, streaming a real Delta table through Petastorm.

The examples come from the funnel problem with known probabilities
(``mtl_model.synthetic``), written to ``gold/examples`` and ``gold/feature_spec``
through the lake I/O module, so these tests exercise the distributed path — Ray
Train, gloo DDP, Petastorm shards, checkpoints, resume — without a Spark build.
The full pipeline (generator -> Spark feature jobs -> training) is covered by
tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mtl_model.artifact import load_artifact
from mtl_model.synthetic import make_funnel_data
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.tables import GOLD_EXAMPLES, GOLD_FEATURE_SPEC

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
BINARY_TASKS = ("click", "add_to_cart", "purchase")
SPLIT_DAYS = {
    "train": ["2026-10-01", "2026-10-02", "2026-10-03"],
    "val": ["2026-10-04"],
    "test": ["2026-10-05"],
}


def _write_examples(lake_root: Path, rows_per_day: int = 8000) -> dict[str, float]:
    """Funnel rows by day and split; returns test AUCs of the oracle (``click``) and of an
    item-popularity baseline (``popularity/<task>``: each item's train-day label rate)."""
    lake = Lake(str(lake_root), row_group_bytes=16 * 1024)
    oracle_auc: dict[str, float] = {}
    train_items: list[np.ndarray] = []
    train_labels: dict[str, list[np.ndarray]] = {t: [] for t in BINARY_TASKS}
    spec = None
    for offset, (split, day) in enumerate(
        (split, day) for split, days in SPLIT_DAYS.items() for day in days
    ):
        data = make_funnel_data(rows_per_day, sample_seed=100 + offset)
        spec = data.spec
        columns = {name: tensor.numpy() for name, tensor in data.batch.items() if name != "user_id"}
        columns["user_id"] = np.array([f"u{u}" for u in data.batch["user_id"].tolist()])
        table = pa.table(columns).append_column("split", pa.array([split] * rows_per_day))
        table = table.append_column("dt", pa.array([day] * rows_per_day))
        lake.write_arrow(table, GOLD_EXAMPLES, partition_by=["split", "dt"])
        if split == "train":
            train_items.append(columns["item"])
            for task in BINARY_TASKS:
                train_labels[task].append(columns[task])
        if split == "test":
            oracle_auc["click"] = float(
                roc_auc_score(data.batch["click"].numpy(), data.oracle["click"].numpy())
            )
            items = np.concatenate(train_items)
            for task in BINARY_TASKS:
                labels = np.concatenate(train_labels[task])
                hits = np.bincount(items, weights=labels, minlength=columns["item"].max() + 1)
                shown = np.bincount(items, minlength=columns["item"].max() + 1)
                rate = (hits + labels.mean()) / (shown + 1.0)  # smoothed item rate
                oracle_auc[f"popularity/{task}"] = float(
                    roc_auc_score(columns[task], rate[columns["item"]])
                )
    assert spec is not None
    # The gold stage's last write: the spec row naming the version of gold/examples.
    snapshot = GoldSnapshot(
        build_id="funnel",
        spec=spec,
        created_at=datetime.now(UTC),
        versions={GOLD_EXAMPLES: lake.version(GOLD_EXAMPLES)},
    )
    lake.write_arrow(snapshot.to_arrow(), GOLD_FEATURE_SPEC)
    return oracle_auc


def _train_command(lake_root: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobs.train",
        "--set",
        f"lake.root={lake_root}",
        "--set",
        f"run.storage_path={runs}",
        "--set",
        f"run.name={name}",
        "--set",
        "model.architecture=mmoe",
        "--set",
        "train.batch_size=256",
        "--set",
        "train.epochs=3",
        "--set",
        "train.lr=0.01",
        "--set",
        "train.weighting.strategy=uncertainty",
        "--set",
        "train.schedule.warmup_steps=5",
        "--set",
        "train.early_stopping.patience=5",
        "--set",
        "ray.cpus_per_worker=1",
        *extra,
    ]


def _run(command: list[str], timeout: int = 420) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def examples_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    root = tmp_path_factory.mktemp("train") / "lake"
    return root, _write_examples(root)


def test_two_worker_mmoe_learns_and_one_worker_agrees(
    examples_lake: tuple[Path, dict[str, float]], tmp_path: Path
) -> None:
    lake_root, oracle = examples_lake
    runs = tmp_path / "runs"
    two = _run(_train_command(lake_root, runs, "two", "--set", "ray.num_workers=2"))
    assert two.returncode == 0, two.stderr[-4000:]
    one = _run(_train_command(lake_root, runs, "one", "--set", "ray.num_workers=1"))
    assert one.returncode == 0, one.stderr[-4000:]

    metrics_two = json.loads((runs / "two" / "metrics.json").read_text())
    metrics_one = json.loads((runs / "one" / "metrics.json").read_text())
    for metrics in (metrics_two, metrics_one):
        final = metrics["final"]
        # The popularity-free floor is 0.5; the oracle is the ceiling. MMoE must get most
        # of the way on click, and every binary task must beat chance clearly.
        lift = (final["test/click/auc"] - 0.5) / (oracle["click"] - 0.5)
        assert lift > 0.9, final
        for task in BINARY_TASKS:
            assert final[f"test/{task}/auc"] > 0.7, final
            # Personal signal beyond what the item alone says.
            assert final[f"test/{task}/auc"] > oracle[f"popularity/{task}"] + 0.02, (
                task,
                final,
                oracle,
            )
        assert metrics["table_versions"]["gold/examples"] >= 0
        assert len(metrics["history"]) == 3
    gap = abs(metrics_two["final"]["test/click/auc"] - metrics_one["final"]["test/click/auc"])
    assert gap < 0.02, (metrics_two["final"], metrics_one["final"])

    artifact = load_artifact(runs / "two" / "model.pt")
    assert artifact.metrics["test/click/auc"] == metrics_two["final"]["test/click/auc"]
    assert (runs / "two" / "curves.png").stat().st_size > 0
    assert any((runs / "two" / "tensorboard").iterdir())
    assert "samples/s" in two.stderr and "data wait" in two.stderr


def test_stopped_run_resumes_from_its_checkpoint(
    examples_lake: tuple[Path, dict[str, float]], tmp_path: Path
) -> None:
    lake_root, _ = examples_lake
    runs = tmp_path / "runs"
    command = _train_command(lake_root, runs, "stopped", "--set", "ray.num_workers=2")
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:
            if list((runs / "stopped").glob("checkpoint_*/train_state.pt")):
                break
            assert proc.poll() is None, "training ended before its first checkpoint"
            time.sleep(1)
        else:
            pytest.fail("no checkpoint within the deadline")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray die together
        proc.wait(timeout=60)
    assert not (runs / "stopped" / "metrics.json").exists()

    resumed = _run([*command, "--resume", "stopped"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming stopped" in resumed.stderr
    metrics = json.loads((runs / "stopped" / "metrics.json").read_text())
    epochs = [int(r["epoch"]) for r in metrics["history"]]
    assert epochs == [0, 1, 2], epochs
    state = torch.load(runs / "stopped" / "model.pt", weights_only=True)
    assert "state_dict" in state
