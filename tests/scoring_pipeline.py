"""A tiny end-to-end pipeline for the scoring and report tests, built once per process.

The run's shared build (``tests/shared_lake.py``: generator -> ``jobs.build_features
--stage all``, the real jobs), copied so scoring may write -> a small model trained
in-process with ``mtl_model.loop.fit`` (the epoch driver Ray workers run too) on the gold
snapshot's rows read through ``Lake.read_arrow`` (Ray is not needed to get weights) -> run
directories with model.pt, config.json and metrics.json written by ``write_run_metrics``,
as ``finalize_run`` writes them: one MMoE run and one single-task baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pytest
import torch
from shared_lake import FEATURES, GENERATOR, shared_build

from jobs.config import PipelineConfig
from jobs.score_users import main as score_users
from mtl_model.architectures import build_model
from mtl_model.artifact import artifact_from_model, save_artifact
from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.features import Batch
from mtl_model.loop import EpochBatches, evaluate, fit
from mtl_model.ray_train import RunConfigBundle, write_run_metrics
from mtl_model.run_config import TrainRunConfig
from mtl_model.streaming import BatchColumns, StreamBatch, to_tensors
from mtlrec.config import RayConfig, load_config
from mtlrec.feature_spec import FeatureSpec
from mtlrec.gold_build import read_build
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.tables import GOLD_EXAMPLES

SCORING = [
    "score.top_k=5",
    "score.candidates.per_user=12",
    "score.candidates.items_per_category=4",
    "score.candidates.recent_items=4",
    "score.active_days=4",
    "score.report.k=5",
    "score.batch_size=64",  # several batches per Arrow frame: exercises the re-cutting
]
MODEL = [
    "model.embedding_dim=4",
    "model.bottom_hidden=[16]",
    "model.expert_hidden=[16]",
    "model.num_experts=2",
    "model.tower_hidden=[8]",
    "train.epochs=3",
    "train.lr=0.01",
    "train.batch_size=256",
    "train.eval_batch_size=1024",
    "train.schedule.warmup_steps=2",
]


@dataclass(frozen=True)
class Pipeline:
    root: Path
    overrides: list[str]
    cfg: PipelineConfig
    lake: Lake
    snapshot: GoldSnapshot
    runs: dict[str, Path]  # architecture -> run directory

    @property
    def spec(self) -> FeatureSpec:
        return self.snapshot.spec

    def cli(self) -> list[str]:
        """``--set`` arguments that point any job at this pipeline."""
        return [arg for item in self.overrides for arg in ("--set", item)]

    def model(self, architecture: str = "mmoe") -> Path:
        return self.runs[architecture] / "model.pt"


_BUILT: dict[str, Pipeline] = {}


def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The pipeline (in a new temp folder) on first call; the same object afterwards."""
    if "pipeline" not in _BUILT:
        root = tmp_path_factory.mktemp("scoring")
        shared_build(tmp_path_factory).copy_to(root)
        _BUILT["pipeline"] = _build(root)
    return _BUILT["pipeline"]


def _build(root: Path) -> Pipeline:
    overrides = [
        f"lake.root={root / 'lake'}",
        f"lake.raw_root={root / 'raw'}",
        f"generator.truth_root={root / 'truth'}",
        f"run.storage_path={root / 'runs'}",
        *GENERATOR,
        *FEATURES,
        *SCORING,
        *MODEL,
    ]
    cfg = load_config(PipelineConfig, None, overrides)
    lake = Lake.from_config(cfg.lake)
    snapshot = GoldSnapshot.resolve(lake)
    runs = {
        architecture: _train_run(lake, snapshot, cfg, architecture, root / "runs" / architecture)
        for architecture in ("mmoe", "single_task")
    }
    return Pipeline(root, overrides, cfg, lake, snapshot, runs)


def split_batches(
    lake: Lake, snapshot: GoldSnapshot, split: str, batch_size: int, seed: int | None = None
) -> Iterator[StreamBatch]:
    """A split of the snapshot's gold/examples as batches: shuffled, for training, when
    ``seed`` is given; else in table order with ``user_id`` (evaluation's GAUC groups)."""
    columns = BatchColumns.from_spec(
        snapshot.spec, id_columns=["user_id"] if seed is None else []
    )
    table: pa.Table = lake.read_arrow(
        GOLD_EXAMPLES,
        snapshot.version(GOLD_EXAMPLES),
        filters=[("split", "=", split)],
        columns=columns.names(),
    )
    data = {name: table.column(name).to_numpy() for name in columns.names()}
    order = np.arange(table.num_rows)
    if seed is not None:
        np.random.default_rng(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield to_tensors({k: v[rows] for k, v in data.items()}, columns)


def _train_run(
    lake: Lake, snapshot: GoldSnapshot, cfg: PipelineConfig, architecture: str, run_dir: Path
) -> Path:
    torch.manual_seed(0)
    spec = snapshot.spec
    model_cfg: ModelConfig = cfg.model.model_copy(update={"architecture": architecture})
    train_cfg: TrainConfig = cfg.train
    model = build_model(spec, model_cfg)

    def train_batches(epoch: int) -> EpochBatches:
        # Training batches hold tensors only (no id columns).
        batches = split_batches(lake, snapshot, "train", train_cfg.batch_size, epoch)
        return EpochBatches(cast(Iterable[Batch], batches))

    state = fit(
        model,
        train_batches,
        lambda: split_batches(lake, snapshot, "val", train_cfg.eval_batch_size),
        spec,
        train_cfg,
        steps_per_epoch=8,
    )
    test = evaluate(
        model, split_batches(lake, snapshot, "test", train_cfg.eval_batch_size), spec
    )
    metrics = {**state.best_record(), **{f"test/{k}": v for k, v in test.items()}}
    run_dir.mkdir(parents=True, exist_ok=True)
    build = read_build(lake)
    assert build is not None
    save_artifact(
        artifact_from_model(model, spec, model_cfg, metrics, train_cfg, gold_build=build.ref),
        run_dir / "model.pt",
    )
    write_run_metrics(run_dir, state, metrics, snapshot, cluster=None)
    bundle = RunConfigBundle(model_cfg, train_cfg, TrainRunConfig(), RayConfig())
    (run_dir / "config.json").write_text(bundle.to_json())
    return run_dir


@dataclass(frozen=True)
class ScoringRun:
    day: str
    model_version: str
    exit_code: int
    last_line: str


_SCORED: dict[str, ScoringRun] = {}


def run_job(job: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    """Run a job's main in-process; returns its exit code and the last line it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = job(argv)
    lines = out.getvalue().strip().splitlines()
    return code, lines[-1] if lines else ""


def score_test_day(built: Pipeline) -> ScoringRun:
    """``jobs.score_users`` with the MMoE model for the first test day, once per process."""
    if "mmoe" not in _SCORED:
        day = built.spec.test_days[0]
        code, last = run_job(
            score_users, ["--model", str(built.model()), "--date", day, *built.cli()]
        )
        version = hashlib.sha256(built.model().read_bytes()).hexdigest()[:12]
        _SCORED["mmoe"] = ScoringRun(day, version, code, last)
    return _SCORED["mmoe"]
