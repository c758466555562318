"""The Petastorm shard stream without Ray: sharding rule, verification, conversion, re-batching.

Every read here is a real Petastorm read of real Parquet files committed to a Delta table
with ``Lake.write_arrow``; the expectations come from the files' footers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtl_model.shards import RowGroup, list_row_groups, plan_shard
from mtl_model.streaming import (
    BatchColumns,
    Columns,
    Rebatcher,
    ShardReadError,
    ShardStream,
    StreamSettings,
    split_file_urls,
    to_tensors,
)
from mtlrec.feature_spec import (
    CategoricalFeature,
    DenseFeature,
    EmbeddingFeature,
    FeatureSpec,
    TaskSpec,
)
from mtlrec.lake import Lake

COLUMNS = BatchColumns(int64=("row_id", "cat_item"), float32=("price", "click"))
ROWS_PER_GROUP = 1024  # Lake.write_arrow's floor; row_group_bytes=1 hits it exactly


def examples(first: int, rows: int, split: str, dt: str) -> pa.Table:
    ids = np.arange(first, first + rows, dtype=np.int64)
    return pa.table(
        {
            "row_id": ids,
            "cat_item": (ids % 97).astype(np.int64),
            "price": (ids * 0.5).astype(np.float32),
            "click": (ids % 3 == 0).astype(np.float32),
            "user_id": np.array([f"u{i % 11}" for i in ids]),
            "split": [split] * rows,
            "dt": [dt] * rows,
        }
    )


@pytest.fixture()
def small_lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"), row_group_bytes=1)


def write_split(lake: Lake, parts: list[tuple[str, int]], split: str = "train") -> list[str]:
    """One file per ``(dt, rows)``; files end in a short row group when rows % 1024 != 0."""
    first = 0
    for dt, rows in parts:
        lake.write_arrow(
            examples(first, rows, split, dt), "gold/examples", partition_by=["split", "dt"]
        )
        first += rows
    return split_file_urls(lake, split)


def ids_in(row_groups: list[RowGroup]) -> list[int]:
    ids: list[int] = []
    for rg in row_groups:
        path = rg.url.removeprefix("file://")
        ids.extend(
            pq.ParquetFile(path).read_row_group(rg.index, columns=["row_id"])["row_id"].to_pylist()
        )
    return ids


def stream_of(
    files: list[str],
    rank: int,
    world_size: int,
    columns: BatchColumns = COLUMNS,
    cls: type[ShardStream] = ShardStream,
    **settings: Any,
) -> ShardStream:
    settings.setdefault("batch_size", 256)
    return cls(
        files, columns, rank=rank, world_size=world_size, settings=StreamSettings(**settings)
    )


def read_ids(stream: ShardStream) -> list[int]:
    return [int(i) for chunk in stream.verified_chunks() for i in chunk["row_id"]]


def test_plan_matches_what_petastorm_reads_unequal_shards(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 5 * 1024 + 300), ("2026-10-02", 3 * 1024 + 17)])
    groups = list_row_groups(files)
    assert len(groups) == 10 and sum(g.num_rows for g in groups) == 8 * 1024 + 317
    seen: list[int] = []
    for rank in range(3):
        stream = stream_of(files, rank, 3, seed=5)
        got = read_ids(stream)
        planned = ids_in(list(stream.plan.row_groups))
        assert sorted(got) == sorted(planned)
        assert len(got) == stream.expected_rows()
        assert stream.plan.row_groups == tuple(groups[rank::3])
        seen.extend(got)
    assert sorted(seen) == list(range(8 * 1024 + 317))
    sizes = sorted(stream_of(files, r, 3).expected_rows() for r in range(3))
    assert len(set(sizes)) > 1  # unequal shards, as the design warns


def test_fewer_row_groups_than_ranks_gives_empty_ranks_not_errors(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 1024 + 10)])  # two row groups
    seen: list[int] = []
    for rank in range(4):
        stream = stream_of(files, rank, 4, batch_size=100)
        batches = list(stream)
        rows = sum(len(b["row_id"]) for b in batches)
        assert rows == stream.expected_rows() == stream.finish()
        assert len(batches) == stream.expected_batches()
        if rank >= 2:
            assert stream.plan.reads_nothing and rows == 0 and batches == []
        seen.extend(int(i) for b in batches for i in b["row_id"])
    assert sorted(seen) == list(range(1024 + 10))


def test_empty_split_reads_nothing(small_lake: Lake) -> None:
    write_split(small_lake, [("2026-10-01", 2048)], split="train")
    files = split_file_urls(small_lake, "val")
    stream = stream_of(files, 0, 2, batch_size=8)
    assert files == [] and stream.expected_rows() == 0 and list(stream) == []
    assert stream.finish() == 0


def test_epochs_reshuffle_and_repeat_exactly(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 8 * 1024)])
    first, again, second = (read_ids(stream_of(files, 1, 2, seed=s)) for s in (0, 0, 1))
    assert first == again  # same seed: the same order, even for 0 (what a resume relies on)
    assert first != second and sorted(first) == sorted(second)
    in_order = read_ids(stream_of(files, 1, 2, shuffle=False))
    assert in_order == sorted(in_order)


def test_batches_follow_the_contract_and_cover_the_shard(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 3 * 1024 + 77)])
    columns = BatchColumns(("row_id", "cat_item"), ("price", "click"), passthrough=("user_id",))
    stream = stream_of(files, 0, 1, columns, batch_size=500, shuffle_buffer_rows=700, seed=1)
    batches = list(stream)
    assert [len(b["row_id"]) for b in batches] == [500] * 6 + [3 * 1024 + 77 - 3000]
    assert len(batches) == stream.expected_batches()
    all_ids = []
    for batch in batches:
        row_id, price = batch["row_id"], batch["price"]
        assert isinstance(row_id, torch.Tensor) and isinstance(price, torch.Tensor)
        assert row_id.dtype == torch.int64 and batch["cat_item"].dtype == torch.int64
        assert price.dtype == torch.float32 and batch["click"].dtype == torch.float32
        assert isinstance(batch["user_id"], np.ndarray) and batch["user_id"].dtype.kind == "U"
        ids = row_id.numpy()
        np.testing.assert_array_equal(price.numpy(), (ids * 0.5).astype(np.float32))
        np.testing.assert_array_equal(batch["user_id"], [f"u{i % 11}" for i in ids])
        all_ids.extend(ids.tolist())
    assert sorted(all_ids) == list(range(3 * 1024 + 77))
    dropped = stream_of(files, 0, 1, columns, batch_size=500, drop_last=True)
    assert dropped.expected_batches() == 6 and len(list(dropped)) == 6
    with pytest.raises(RuntimeError, match="read once"):
        iter(dropped)


def test_columns_from_feature_spec() -> None:
    spec = FeatureSpec(
        categorical=[CategoricalFeature(name="cat_item", vocab_size=10)],
        dense=[DenseFeature(name="price", mean=1.0, std=2.0)],
        embeddings=[EmbeddingFeature(name="text", columns=["text_0", "text_1"])],
        tasks=[TaskSpec(name="click", type="binary", label_column="label_click")],
    )
    columns = BatchColumns.from_spec(spec, id_columns=["user_id"])
    assert columns.int64 == ("cat_item",)
    assert columns.float32 == ("price", "text_0", "text_1", "label_click")
    assert columns.names()[-1] == "user_id"
    with pytest.raises(ValueError, match="twice"):
        BatchColumns(("a",), ("a",)).names()


def test_to_tensors_rejects_columns_that_break_the_contract() -> None:
    chunk: Columns = {
        "row_id": np.array([1.0, np.nan]),
        "cat_item": np.array([1, 2]),
        "price": np.array([1, 2], dtype=np.int32),
        "click": np.array([0.0, 1.0]),
    }
    with pytest.raises(ValueError, match="'row_id' must hold integer indices"):
        to_tensors(chunk, COLUMNS)
    chunk["row_id"] = np.array([7, 8], dtype=np.int32)
    out = to_tensors(chunk, COLUMNS)
    assert out["row_id"].dtype == torch.int64 and out["price"].dtype == torch.float32
    chunk["price"] = np.array(["a", "b"])
    with pytest.raises(ValueError, match="'price' must be numeric"):
        to_tensors(chunk, COLUMNS)


def chunks_of(sizes: list[int]) -> Iterator[Columns]:
    start = 0
    for size in sizes:
        yield {"x": np.arange(start, start + size), "y": -np.arange(start, start + size)}
        start += size


def test_rebatcher_carries_remainders_in_order() -> None:
    rebatcher = Rebatcher(batch_size=4)
    out = [b for chunk in chunks_of([5, 3, 0, 9]) for b in rebatcher.push(chunk)]
    out += rebatcher.flush()
    assert [len(b["x"]) for b in out] == [4, 4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in out]), np.arange(17))
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in out]), -np.arange(17))
    dropping = Rebatcher(batch_size=4, drop_last=True)
    out = [b for chunk in chunks_of([5, 3, 9]) for b in dropping.push(chunk)] + dropping.flush()
    assert [len(b["x"]) for b in out] == [4, 4, 4, 4]


def test_shuffle_buffer_mixes_rows_across_chunks_and_keeps_each_once() -> None:
    rebatcher = Rebatcher(batch_size=10, shuffle_buffer_rows=50, rng=np.random.default_rng(0))
    out: list[Columns] = []
    for chunk in chunks_of([30] * 10):
        out.extend(rebatcher.push(chunk))
        assert rebatcher._rows < 50 + 10 + 30  # the buffer stays bounded
    out.extend(rebatcher.flush())
    xs = np.concatenate([b["x"] for b in out])
    assert sorted(xs.tolist()) == list(range(300))
    assert not np.array_equal(xs, np.arange(300))
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in out]), -xs)  # rows stay whole
    first = out[0]["x"]
    assert first.max() >= 30  # the first batch already mixes more than one row group
    with pytest.raises(ValueError, match="batch_size"):
        Rebatcher(batch_size=0)


def test_missing_column_is_named(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 100)])
    with pytest.raises(ValueError, match=r"\['no_such'\] are missing from file://"):
        stream_of(files, 0, 1, BatchColumns(("row_id",), ("no_such",)))


def rewrite(url: str, table: pa.Table) -> None:
    pq.write_table(table, url.removeprefix("file://"), row_group_size=ROWS_PER_GROUP)


def test_short_read_is_retried_then_raises_naming_rank_and_files(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 2 * 1024)])
    stream = stream_of(files, 0, 1, retries=1)
    assert stream.expected_rows() == 2048
    # The file changes under the planned snapshot and loses 24 rows.
    rewrite(files[0], examples(0, 2 * 1024 - 24, "train", "2026-10-01").drop(["split", "dt"]))
    with pytest.raises(ShardReadError) as caught:
        list(stream)
    message = str(caught.value)
    assert "rank 0/1 seed 0 attempt 2: got 2024 rows" in message
    assert "expected 2048 rows from 2 row groups in 1 files" in message and files[0] in message
    assert stream.read_attempts == 2


def test_long_read_raises_at_once(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 2 * 1024)])
    stream = stream_of(files, 0, 1)
    rewrite(files[0], examples(0, 2 * 1024 + 500, "train", "2026-10-01").drop(["split", "dt"]))
    stream_iter = iter(stream)
    next(stream_iter)  # the consumer stops after one batch; finish() reads and checks the rest
    with pytest.raises(ShardReadError, match="more than expected 2048 rows"):
        stream.finish()
    assert stream.read_attempts == 1


class FlakyStream(ShardStream):
    """Real reads, but one attempt ends early after ``keep_chunks`` chunks, as the race
    makes it: the first attempt that gets that far. With the thread pool the real race
    itself may empty an attempt before it (seen in a full suite run); cutting the first
    attempt regardless then left no partial read to test."""

    keep_chunks = 0
    cut = False

    def _read_once(self) -> Generator[Columns, None, None]:
        reads = super()._read_once()
        if self.cut:
            yield from reads
            return
        with closing(reads):
            for index, chunk in enumerate(reads):
                if index == self.keep_chunks:
                    self.cut = True
                    break
                yield chunk


@pytest.mark.parametrize("pool", ["dummy", "thread"])
def test_zero_row_read_is_retried(small_lake: Lake, pool: str) -> None:
    files = write_split(small_lake, [("2026-10-01", 6 * 1024)])
    stream = stream_of(files, 0, 2, cls=FlakyStream, reader_pool=pool, reader_workers=2)
    assert sorted(read_ids(stream)) == sorted(ids_in(list(stream.plan.row_groups)))
    # >= : with the thread pool the real race may empty a retry too (seen while writing this).
    assert stream.read_attempts >= 2


def test_partial_read_resumes_exactly_with_the_dummy_pool(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 6 * 1024)])
    reference = read_ids(stream_of(files, 0, 2, seed=9))
    stream = stream_of(files, 0, 2, cls=FlakyStream, seed=9)
    assert isinstance(stream, FlakyStream)
    stream.keep_chunks = 2
    assert read_ids(stream) == reference  # same rows, same order, none twice
    assert stream.read_attempts == 2


def test_partial_read_with_the_thread_pool_raises_instead_of_duplicating(small_lake: Lake) -> None:
    files = write_split(small_lake, [("2026-10-01", 6 * 1024)])
    stream = stream_of(files, 0, 2, cls=FlakyStream, reader_pool="thread", reader_workers=2)
    assert isinstance(stream, FlakyStream)
    stream.keep_chunks = 1
    with pytest.raises(ShardReadError, match="cannot resume"):
        read_ids(stream)


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        plan_shard([], rank=2, world_size=2)
    with pytest.raises(ValueError, match="reader_pool must be one of"):
        StreamSettings(batch_size=8, reader_pool="process")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shuffle_buffer_rows must be >= 0"):
        StreamSettings(batch_size=8, shuffle_buffer_rows=-1)


def test_read_only_arrow_columns_become_tensors_without_a_warning() -> None:
    """Scoring hands to_tensors zero-copy (read-only) Arrow columns; torch's warning about
    wrapping them must not reach the job's output. A fresh process: torch warns once per
    process, so an earlier test's batch would hide it."""
    script = textwrap.dedent(
        """
        import numpy as np
        from mtl_model.streaming import BatchColumns, to_tensors
        ids = np.arange(4, dtype=np.int64)
        ids.setflags(write=False)
        batch = to_tensors({"c": ids}, BatchColumns(int64=("c",), float32=()))
        print(batch["c"].tolist())
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[0, 1, 2, 3]"
