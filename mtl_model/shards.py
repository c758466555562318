"""Which row groups Petastorm gives each rank, worked out from the Parquet footers alone.

This replicates petastorm 0.13.1's rule for ``make_batch_reader(file_urls, cur_shard,
shard_count)`` over a list of files that carries no ``_metadata`` summary (our case: the
Delta snapshot's file list):

1. ``pq.ParquetDataset(list_of_paths)`` keeps the files in the order given
   (``pyarrow.parquet.core._make_manifest``), and ``_split_row_groups_from_footers``
   expands each file into its row groups 0..n-1 in that order. A file without row
   groups contributes nothing.
2. ``Reader._partition_row_groups`` keeps the row groups whose *position* ``i`` in that
   list satisfies ``i % shard_count == cur_shard``. The seed only shuffles the order
   of the list before that filter; the filter tests the position value, so which row
   groups a shard gets never depends on the seed (shards stay disjoint and complete
   across epochs as long as every rank passes the same file list).
3. With fewer row groups than shards petastorm raises ``NoDataAvailableError`` on every
   rank. We shard over ``min(world_size, row_groups)`` instead: rank ``r`` below that
   count gets exactly row group ``r``'s share and the ranks above it read nothing
   (expected rows 0), so a tiny split never fails and nothing is read twice.

The expected row count of a rank is the sum of ``num_rows`` of its row groups, which is
what the streaming reader checks every epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow.parquet as pq
from petastorm.fs_utils import get_filesystem_and_path_or_paths


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group: ``index`` within the file at ``url``."""

    url: str
    index: int
    num_rows: int


@dataclass(frozen=True)
class ShardPlan:
    """The row groups one rank reads and the petastorm arguments that select them."""

    rank: int
    world_size: int
    shard_count: int
    """What to pass to petastorm as ``shard_count`` (0 when the split has no row groups)."""
    row_groups: tuple[RowGroup, ...]
    total_row_groups: int
    total_rows: int

    @property
    def expected_rows(self) -> int:
        return sum(rg.num_rows for rg in self.row_groups)

    @property
    def reads_nothing(self) -> bool:
        """True when this rank has no row group (no reader is created for it)."""
        return not self.row_groups


def list_row_groups(
    file_urls: Sequence[str],
    columns: Sequence[str] = (),
    storage_options: Mapping[str, str] | None = None,
) -> list[RowGroup]:
    """Every row group of ``file_urls`` in petastorm's order, read from the footers.

    Uses petastorm's own URL-to-filesystem resolution so the footers read here are the
    ones its reader reads. Raises ``ValueError`` naming the file when one of ``columns``
    is missing from it (petastorm would silently drop a column it cannot match).
    """
    if not file_urls:
        return []
    filesystem, paths = get_filesystem_and_path_or_paths(
        list(file_urls), storage_options=dict(storage_options) if storage_options else None
    )
    groups: list[RowGroup] = []
    for url, path in zip(file_urls, paths, strict=True):
        with filesystem.open(path) as handle:
            meta = pq.ParquetFile(handle).metadata
        missing = sorted(set(columns) - set(meta.schema.to_arrow_schema().names))
        if missing:
            raise ValueError(f"columns {missing} are missing from {url}")
        groups.extend(
            RowGroup(url, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)
        )
    return groups


def plan_shard(row_groups: Sequence[RowGroup], rank: int, world_size: int) -> ShardPlan:
    """The row groups petastorm reads for ``rank`` of ``world_size`` (module docstring)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    shard_count = min(world_size, len(row_groups))
    mine = tuple(rg for i, rg in enumerate(row_groups) if i % world_size == rank)
    return ShardPlan(
        rank=rank,
        world_size=world_size,
        shard_count=shard_count,
        row_groups=mine,
        total_row_groups=len(row_groups),
        total_rows=sum(rg.num_rows for rg in row_groups),
    )
