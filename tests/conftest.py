"""Shared fixtures: one local Spark session per test run, and a fresh lake per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from mtlrec.config import SparkConfig
from mtlrec.lake import Lake
from mtlrec.spark import get_spark

# Keep Spark and Ray from fighting over the 2 cores CI has; tests pass explicit sizes.
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = get_spark(
        SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="2g", app_name="tests")
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
