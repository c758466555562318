"""No hangs: split layouts that could stall or silently idle DDP fail fast with one message.

Unequal shards and val/test splits with fewer row groups than workers must *complete*:
that is the uninterrupted run of ``test_training_faults.py`` (its lake has exactly that
layout). The layouts here cannot produce a meaningful run, so ``jobs.train`` must refuse
them before starting Ray, with exit 2 and a message naming the split:

- no validation split at all (an empty ``split=val``);
- a train split with fewer row groups than workers: ranks train for the MIN of their
  batch counts, so a rank without a row group would make every rank train zero steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.harness import run_job
from reliability.training import train_command, write_examples

pytestmark = pytest.mark.ray

SMALL, ONE_GROUP = 16 * 1024, 64 * 1024 * 1024


def _refused(lake_root: Path, tmp_path: Path, named: str) -> None:
    runs = tmp_path / "runs"
    run = run_job(train_command(lake_root, runs, "refused"), timeout=150)
    assert run.returncode == 2, (run.stdout + run.stderr)[-4000:]
    assert named in run.stderr, run.stderr[-4000:]
    assert "Traceback (most recent call last)" not in run.stderr
    assert "Started a local Ray instance" not in run.stdout + run.stderr
    assert not runs.exists(), "nothing may be written"


@pytest.mark.timeout(180)
def test_empty_validation_split_fails_fast_naming_it(tmp_path: Path) -> None:
    write_examples(
        tmp_path / "lake",
        {"train": [("2026-10-01", 3000)], "test": [("2026-10-04", 500)]},
        {"train": SMALL, "test": ONE_GROUP},
    )
    _refused(tmp_path / "lake", tmp_path, "has no files for split=val")


@pytest.mark.timeout(180)
def test_fewer_train_row_groups_than_workers_fails_fast(tmp_path: Path) -> None:
    write_examples(
        tmp_path / "lake",
        {
            "train": [("2026-10-01", 3000)],
            "val": [("2026-10-03", 500)],
            "test": [("2026-10-04", 500)],
        },
        {"train": ONE_GROUP, "val": ONE_GROUP, "test": ONE_GROUP},
    )
    _refused(tmp_path / "lake", tmp_path, "split=train has 1 row group(s) for 2 workers")
