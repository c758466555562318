"""Shared fixtures: one local Spark session per test process, and a fresh lake per test.

``scripts/test.sh`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadscope``):
most of the suite's wall time is waiting on JVM and Ray start-ups and on small Spark jobs,
so a second process fills one's idle time with the other's work. The scheduler below keeps
what shares state in one worker, and starts the longest modules first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from mtlrec.config import SparkConfig
from mtlrec.lake import Lake
from mtlrec.spark import get_spark

# Keep Spark and Ray from fighting over the 2 cores CI has; tests pass explicit sizes.
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = get_spark(
        SparkConfig(
            master="local[2]",
            shuffle_partitions=2,
            driver_memory="2g",
            app_name="tests",
            # Tests run many small queries once each, so the JVM's time goes to compiling
            # rather than to running hot code: the C1 compiler alone (no C2) took the CPU of
            # tests/test_behavior_csv.py from 126 s to 80 s (one side-by-side pair of runs).
            conf={"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"},
        )
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models: intra-op threads only contend with the other test processes on 2 cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"), row_group_bytes=64 * 1024)


# ------------------------------------------------------------------ xdist scheduling
SHARED_STATE = {
    # Both read one generated pipeline built once per process (tests/scoring_pipeline.py).
    "tests/test_report.py": "scoring_pipeline",
    "tests/test_scoring.py": "scoring_pipeline",
}
"""Modules that must run in one worker, by the name of what they share."""

LONGEST_FIRST = (
    # Whole-module times on 2 cores (fixture set-ups included), longest first: a long module
    # started last would leave one worker idle while the other finishes it.
    "tests/test_local_cluster.py",
    "tests/reliability/test_idempotency.py",
    "scoring_pipeline",
    "tests/test_train_ray.py",
    "tests/test_tune.py",
    "tests/reliability/test_training_faults.py",
    "tests/reliability/test_ray_address.py",
    "tests/test_behavior_csv.py",
    "tests/test_silver.py",
    "tests/test_gold_pipeline.py",
    "tests/test_real_dumps.py",
)
"""Work units (modules, or a SHARED_STATE name) handed out before the rest, in this order."""


def work_unit(nodeid: str) -> str:
    """The unit one worker runs whole: a module (its module-scoped fixtures are built once),
    or the SHARED_STATE name its module belongs to."""
    module = nodeid.split("::", 1)[0]
    return SHARED_STATE.get(module, module)


def _rank(nodeid: str) -> int:
    unit = work_unit(nodeid)
    return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Stable: modules keep their test order, the rest keep the alphabetical module order.
    # xdist's scheduler hands out work units in this (collection) order.
    items.sort(key=lambda item: _rank(item.nodeid))


class WorkUnitScheduling(LoadScopeScheduling):
    """``--dist loadscope`` with ``work_unit`` as the scope."""

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)


class _Scheduler:
    """The hook xdist asks for a scheduler; registered only where xdist is loaded (a hook
    pytest does not know fails the run, e.g. under ``-p no:xdist``)."""

    @pytest.hookimpl(tryfirst=True)  # before xdist's own: ours refines its loadscope
    def pytest_xdist_make_scheduler(
        self, config: pytest.Config, log: Producer
    ) -> LoadScopeScheduling | None:
        if config.getvalue("dist") != "loadscope":
            return None
        return WorkUnitScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_Scheduler(), "mtlrec-work-units")
