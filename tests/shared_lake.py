"""One generated log and its whole feature build, made once per test run and shared.

The scoring and report tests (``tests/scoring_pipeline.py``) and the cluster test's
``local[2]`` reference (``tests/test_local_cluster.py``) need the same thing: a small
generated log built ``--stage all`` by the real jobs. It used to be built once by each
(the cluster test's copy as a second spark-submit run beside the cluster's own), which
cost a whole feature job of CPU on a 2-core machine. Now whichever pytest-xdist worker
asks first builds it, under an exclusive file lock the other worker waits on, into the
run's shared temp folder; the build is then read-only. A user that writes (scoring writes
``gold/recommendations``) copies it first: ``copy_to``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.build_features import main as build_features
from jobs.generate_logs import main as generate_logs

GENERATOR = [
    "generator.num_users=150",
    "generator.num_items=80",
    "generator.num_days=5",
    "generator.processes=1",
    "generator.seed=5",
    # Denser funnel than the default so a 150-user log has purchases on every day.
    "generator.rates.click=0.08",
    "generator.rates.add_to_cart_given_click=0.4",
    "generator.rates.purchase_given_click=0.25",
]
FEATURES = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "features.gold.shuffle_partitions=2",
    # The text encoder is covered by tests/test_gold_pipeline.py and the idempotency
    # test; here it would only add model loading to every build and scoring run.
    "features.gold.text.enabled=false",
    "lake.row_group_bytes=65536",
]
PARTS = ("raw", "lake", "truth")
"""The folders of a build: the generated log, its tables, the generator's ground truth."""


@dataclass(frozen=True)
class SharedBuild:
    folder: Path  # holds PARTS; read-only once built

    @property
    def raw(self) -> Path:
        return self.folder / "raw"

    def copy_to(self, root: Path, parts: tuple[str, ...] = PARTS) -> None:
        """A private, writable copy of ``parts`` under ``root`` (``root/lake``, ...).

        Delta logs name their files relative to the table, so the copy is a lake in its
        own right. Bronze rows name the raw file they came from: a build that must equal
        this one reads ``raw`` itself, not a copy."""
        for part in parts:
            shutil.copytree(self.folder / part, root / part)


def _run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp folder every worker of this pytest run shares (xdist gives each worker
    ``<run folder>/popen-gwN``); without xdist, this process's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_build(tmp_path_factory: pytest.TempPathFactory) -> SharedBuild:
    """The run's shared build, made on first call in any worker."""
    folder = _run_folder(tmp_path_factory) / "shared-build"
    done = folder / "BUILT"
    lock_path = folder.parent / "shared-build.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a failed earlier attempt's debris
            overrides = [
                f"lake.root={folder / 'lake'}",
                f"lake.raw_root={folder / 'raw'}",
                f"generator.truth_root={folder / 'truth'}",
                *GENERATOR,
                *FEATURES,
            ]
            cli = [arg for item in overrides for arg in ("--set", item)]
            assert generate_logs(cli) == 0
            assert build_features(["--stage", "all", *cli]) == 0
            done.write_text("ok\n")
    return SharedBuild(folder)
