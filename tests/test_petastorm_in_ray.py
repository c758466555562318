"""Acceptance: readers created in many fresh Ray workers never return a silently empty shard.

Each Ray task runs with ``max_calls=1``, so every shard is read by a reader created in a
brand-new worker process (the situation in which the empty-shard hazard was reported,
docs/petastorm_hazard.md). Expectations come from the Parquet footers, computed here
independently of ``mtl_model.shards``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from mtl_model.streaming import BatchColumns, ShardStream, StreamSettings, split_file_urls
from mtlrec.lake import Lake

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # 16 fresh worker processes

WORLD_SIZE = 4
SEEDS = (11, 12)
ROWS = (7 * 1024 + 300, 5 * 1024 + 41)  # two files, 14 row groups, two of them short
COLUMNS = BatchColumns(int64=("row_id",), float32=("price",))


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def split_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    lake = Lake(str(tmp_path_factory.mktemp("ray_lake") / "lake"), row_group_bytes=1)
    first = 0
    for day, rows in zip(("2026-10-01", "2026-10-02"), ROWS, strict=True):
        ids = np.arange(first, first + rows, dtype=np.int64)
        table = pa.table(
            {
                "row_id": ids,
                "price": ids.astype(np.float32),
                "split": ["train"] * rows,
                "dt": [day] * rows,
            }
        )
        lake.write_arrow(table, "gold/examples", partition_by=["split", "dt"])
        first += rows
    return split_file_urls(lake, "train")


def footer_expectations(files: list[str]) -> list[int]:
    sizes: list[int] = []
    for url in files:
        meta = pq.read_metadata(url.removeprefix("file://"))
        sizes.extend(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return [sum(sizes[rank::WORLD_SIZE]) for rank in range(WORLD_SIZE)]


@ray.remote(max_calls=1, num_cpus=0.5)
def read_shard(
    files: list[str], rank: int, seed: int, pool: Literal["dummy", "thread"], retries: int
) -> dict[str, Any]:
    stream = ShardStream(
        files,
        COLUMNS,
        rank=rank,
        world_size=WORLD_SIZE,
        settings=StreamSettings(
            batch_size=500,
            seed=seed,
            reader_pool=pool,
            reader_workers=10,
            retries=retries,
            shuffle_buffer_rows=1000,
        ),
    )
    ids = [np.asarray(b["row_id"]) for b in stream]
    return {
        "rank": rank,
        "seed": seed,
        "ids": np.concatenate(ids) if ids else np.zeros(0, np.int64),
        "expected": stream.expected_rows(),
        "finished": stream.finish(),
        "attempts": stream.read_attempts,
        "pid": os.getpid(),
    }


@pytest.mark.parametrize(
    ("pool", "retries"),
    # The default pool; and the thread pool that shows the hazard, with enough re-reads that
    # six empty reads in a row (about (1/8)**6) cannot make the test flaky.
    [("dummy", 2), ("thread", 5)],
)
def test_fresh_workers_never_read_a_silently_empty_shard(
    local_ray: None, split_files: list[str], pool: Literal["dummy", "thread"], retries: int
) -> None:
    expected = footer_expectations(split_files)
    assert min(expected) > 0 and len(set(expected)) > 1  # every rank has work; unequal shards
    refs = [
        read_shard.remote(split_files, rank, seed, pool, retries)
        for seed in SEEDS
        for rank in range(WORLD_SIZE)
    ]
    results = ray.get(refs)
    assert len({r["pid"] for r in results}) == len(results)  # each read in a fresh worker
    for seed in SEEDS:
        shards = sorted((r for r in results if r["seed"] == seed), key=lambda r: r["rank"])
        for shard in shards:
            assert len(shard["ids"]) == shard["expected"] == shard["finished"]
            assert shard["expected"] == expected[shard["rank"]]
        union = np.sort(np.concatenate([s["ids"] for s in shards]))
        np.testing.assert_array_equal(union, np.arange(sum(ROWS)))  # no loss, no duplicate
    retried = sum(r["attempts"] > 1 for r in results)
    print(f"{pool} pool: {len(results)} fresh-worker reads, {retried} needed a re-read")
