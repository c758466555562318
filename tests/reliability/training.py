"""Small ``gold/examples`` lakes for training-fault tests, and the ``jobs.train`` command.

Rows come from the funnel problem with known probabilities (``mtl_model.synthetic``),
written through the lake like the gold job writes them (partitioned by split and day),
with each split's row-group layout chosen by the test: the hazards under test —
unequal shards, fewer row groups than workers, an empty split — are layouts.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from mtl_model.synthetic import make_funnel_data
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.tables import GOLD_EXAMPLES, GOLD_FEATURE_SPEC
from reliability.harness import ROOT, job_command, job_env

Layout = Mapping[str, Sequence[tuple[str, int]]]
"""split -> [(day, rows), ...]"""


def write_examples(root: Path, layout: Layout, row_group_bytes: Mapping[str, int]) -> Lake:
    """Write ``gold/examples`` (+ ``gold/feature_spec``) with per-split row-group sizes."""
    spec = None
    seed = 500
    for split, days in layout.items():
        lake = Lake(str(root), row_group_bytes=row_group_bytes[split])
        for day, rows in days:
            data = make_funnel_data(rows, sample_seed=seed)
            seed += 1
            spec = data.spec
            columns = {k: v.numpy() for k, v in data.batch.items() if k != "user_id"}
            columns["user_id"] = np.array([f"u{u}" for u in data.batch["user_id"].tolist()])
            table = pa.table(columns)
            table = table.append_column("split", pa.array([split] * rows))
            table = table.append_column("dt", pa.array([day] * rows))
            lake.write_arrow(table, GOLD_EXAMPLES, partition_by=["split", "dt"])
    assert spec is not None
    lake = Lake(str(root))
    # The gold stage's last write: the spec row naming the version of gold/examples.
    snapshot = GoldSnapshot(
        build_id="reliability",
        spec=spec,
        created_at=datetime.now(UTC),
        versions={GOLD_EXAMPLES: lake.version(GOLD_EXAMPLES)},
    )
    lake.write_arrow(snapshot.to_arrow(), GOLD_FEATURE_SPEC)
    return lake


def train_command(
    lake_root: Path, runs: Path, name: str, *extra: str, epochs: int = 2, workers: int = 2
) -> list[str]:
    return job_command(
        "train",
        *extra,
        overrides=[
            f"lake.root={lake_root}",
            f"run.storage_path={runs}",
            f"run.name={name}",
            "run.max_failures=2",
            "run.checkpoints_to_keep=2",
            "run.shuffle_buffer_rows=512",
            "model.architecture=mmoe",
            "model.text_projection_dim=4",
            "train.batch_size=128",
            "train.eval_batch_size=1024",
            f"train.epochs={epochs}",
            "train.lr=0.01",
            "train.schedule.warmup_steps=5",
            "train.early_stopping.patience=5",
            f"ray.num_workers={workers}",
            "ray.cpus_per_worker=1",
        ],
    )


_RAY_DIRS: list[str] = []


def ray_env(**extra: str) -> dict[str, str]:
    """A private Ray temp dir per job (short: Ray's socket paths must fit 107 bytes), so
    tests read only their own Ray logs and never share a session with another job.
    ``remove_ray_dirs`` deletes them."""
    directory = tempfile.mkdtemp(prefix="mtlrec-ray-", dir="/tmp")
    _RAY_DIRS.append(directory)
    return job_env(RAY_TMPDIR=directory, **extra)


def remove_ray_dirs() -> None:
    while _RAY_DIRS:
        shutil.rmtree(_RAY_DIRS.pop(), ignore_errors=True)


def start_training(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start in its own session (killable as a group); stdout and stderr go to ``log``
    (a pipe nobody drains would block Ray's chatty output)."""
    with log.open("w") as sink:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
