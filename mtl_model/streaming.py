"""Stream one rank's shard of a ``gold/examples`` split into fixed-size torch batches.

DESIGN.md section 6. Each Ray Train worker builds one :class:`ShardStream` per epoch
over the snapshot's file list of a split (the same list on every rank, resolved once by
the driver), iterates it, then calls :meth:`ShardStream.finish`:

- Petastorm's ``make_batch_reader`` reads the row groups of this rank
  (``cur_shard=rank, shard_count=world_size``), in an order drawn from
  ``StreamSettings.seed``: pass a new seed each epoch, the same on every rank;
- batches stream: at most a few row groups plus the local shuffle buffer are in
  memory, never the split;
- columns become tensors per the batch contract (``mtlrec.feature_spec``):
  categorical int64, dense / embedding / label float32; id columns, when asked for,
  stay numpy arrays (strings cannot be tensors);
- every epoch the rows read are counted against the rows of this rank's row groups in
  the Parquet footers (``mtl_model.shards``). A short read is retried; a read that
  stays short, or any read that returns too many rows, raises :class:`ShardReadError`
  naming rank, expected, got and files. ``expected_batches()`` lets DDP ranks agree on
  a common step count (all-reduce MIN) before the epoch starts; ``finish()`` reads what
  the training loop left of the shard, so the count is checked even when ranks stop
  at that common step count.

Reader pool: ``"dummy"`` by default. petastorm 0.13.1's thread pool ends a read early
when its ventilator finishes between two unsynchronised checks in
``ThreadPool.get_results``; in our measurements about one read in eight returned no
rows at all, silently (docs/petastorm_hazard.md). The dummy pool reads in the consuming
thread, in a deterministic order, so a short read can be resumed exactly where the
consumer is; with the thread pool only a read that delivered nothing can be retried.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from petastorm import make_batch_reader
from torch import Tensor

from mtl_model.shards import ShardPlan, list_row_groups, plan_shard
from mtlrec.feature_spec import FeatureSpec
from mtlrec.log import get_logger

if TYPE_CHECKING:  # importing the lake pulls in Spark, which Ray workers do not need
    from mtlrec.lake import Lake
from mtlrec.tables import GOLD_EXAMPLES

PoolType = Literal["dummy", "thread"]
Columns = dict[str, np.ndarray]
StreamBatch = dict[str, Tensor | np.ndarray]

_SEED_MODULUS = 2**31 - 1
_POOLS = ("dummy", "thread")
_log = get_logger("streaming")


class ShardReadError(RuntimeError):
    """A rank's read did not return exactly the rows of its row groups."""


@dataclass(frozen=True)
class BatchColumns:
    """Which columns a batch carries, grouped by the dtype the batch contract gives them."""

    int64: tuple[str, ...]
    float32: tuple[str, ...]
    passthrough: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: FeatureSpec, id_columns: Sequence[str] = ()) -> BatchColumns:
        """Categorical -> int64; dense, embedding and label columns -> float32; ``id_columns``
        (e.g. ``user_id`` for GAUC) are passed through as read."""
        floats = [f.name for f in spec.dense]
        for emb in spec.embeddings:
            floats.extend(emb.columns)
        floats.extend(spec.label_columns())
        return cls(
            int64=tuple(f.name for f in spec.categorical),
            float32=tuple(floats),
            passthrough=tuple(id_columns),
        )

    def names(self) -> list[str]:
        names = [*self.int64, *self.float32, *self.passthrough]
        if len(set(names)) != len(names):
            raise ValueError(f"a column is requested twice: {names}")
        return names


def split_file_urls(
    lake: Lake, split: str, table: str = GOLD_EXAMPLES, version: int | None = None
) -> list[str]:
    """The snapshot's files of one split; resolve once and hand the same list to every rank."""
    return lake.snapshot_files(table, version=version, filters=[("split", "=", split)])


# Batches are only read, never written. Scoring's columns come zero-copy from Arrow memory,
# which numpy marks read-only, and torch warns about wrapping such an array: a line in every
# scoring job's output about a write that never happens.
warnings.filterwarnings(
    "ignore",
    message="The given NumPy array is not writable",
    category=UserWarning,
    module=r"mtl_model\.streaming",
)


def to_tensors(chunk: Mapping[str, np.ndarray], columns: BatchColumns) -> StreamBatch:
    """Numpy columns -> the batch contract's dtypes; raises naming a column that does not fit."""
    out: StreamBatch = {}
    for name in columns.int64:
        values = chunk[name]
        if values.dtype.kind not in "iu":
            raise ValueError(
                f"categorical column {name!r} must hold integer indices, got dtype {values.dtype} "
                "(a null in the column turns it into floats)"
            )
        out[name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
    for name in columns.float32:
        values = chunk[name]
        if values.dtype.kind not in "fiub":
            raise ValueError(f"column {name!r} must be numeric, got dtype {values.dtype}")
        out[name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    for name in columns.passthrough:
        out[name] = chunk[name]
    return out


def num_rows(chunk: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(chunk.values()))) if chunk else 0


def _check_batching(batch_size: int, shuffle_buffer_rows: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle_buffer_rows < 0:
        raise ValueError(f"shuffle_buffer_rows must be >= 0, got {shuffle_buffer_rows}")


def _concat(chunks: Sequence[Columns]) -> Columns:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


class Rebatcher:
    """Re-cuts variable-size chunks (one per row group) into batches of ``batch_size``.

    Remainders carry over to the next chunk. With ``shuffle_buffer_rows > 0`` each batch
    is drawn at random from a buffer that holds at least that many rows (when the stream
    has them), mixing rows across row groups. Every output array is a fresh copy, so the
    tensors made from it own writable memory.
    """

    def __init__(
        self,
        batch_size: int,
        shuffle_buffer_rows: int = 0,
        rng: np.random.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        _check_batching(batch_size, shuffle_buffer_rows)
        self.batch_size = batch_size
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.drop_last = drop_last
        self._rng = rng if rng is not None else np.random.default_rng()
        self._pending: list[Columns] = []
        self._rows = 0

    def push(self, chunk: Columns) -> list[Columns]:
        """Add a chunk; returns the batches that are now ready (possibly none)."""
        rows = num_rows(chunk)
        if rows:
            self._pending.append(chunk)
            self._rows += rows
        ready = []
        reserve = self.shuffle_buffer_rows
        while self._rows >= self.batch_size + reserve:
            ready.append(self._take(self.batch_size))
        return ready

    def flush(self) -> list[Columns]:
        """The rest, at the end of the stream: full batches, then a partial one unless
        ``drop_last``."""
        ready = []
        while self._rows >= self.batch_size:
            ready.append(self._take(self.batch_size))
        if self._rows and not self.drop_last:
            ready.append(self._take(self._rows))
        self._pending, self._rows = [], 0
        return ready

    def _take(self, n: int) -> Columns:
        return self._draw(n) if self.shuffle_buffer_rows else self._front(n)

    def _front(self, n: int) -> Columns:
        taken: list[Columns] = []
        need = n
        while need:
            head = self._pending[0]
            rows = num_rows(head)
            if rows <= need:
                taken.append(self._pending.pop(0))
                need -= rows
            else:
                taken.append({k: v[:need] for k, v in head.items()})
                self._pending[0] = {k: v[need:] for k, v in head.items()}
                need = 0
        self._rows -= n
        return _concat(taken)

    def _draw(self, n: int) -> Columns:
        buffer = _concat(self._pending) if len(self._pending) > 1 else self._pending[0]
        picked = self._rng.choice(self._rows, size=n, replace=False)
        keep = np.ones(self._rows, dtype=bool)
        keep[picked] = False
        self._pending = [{k: v[keep] for k, v in buffer.items()}] if n < self._rows else []
        self._rows -= n
        return {k: v[picked] for k, v in buffer.items()}


@dataclass(frozen=True)
class StreamSettings:
    """How one epoch's shard is read; plain values, so the caller maps its config onto them."""

    batch_size: int
    seed: int = 0
    """This epoch's seed, the same on every rank (e.g. ``base_seed * 1_000_003 + epoch``)."""
    shuffle: bool = True
    """Shuffle row-group order and the rows within each row group (off for evaluation)."""
    shuffle_buffer_rows: int = 0
    drop_last: bool = False
    reader_pool: PoolType = "dummy"
    reader_workers: int = 1
    """Threads of the ``"thread"`` pool; the dummy pool reads in the consuming thread."""
    retries: int = 2
    """Re-reads after a read whose row count is short."""

    def __post_init__(self) -> None:
        _check_batching(self.batch_size, self.shuffle_buffer_rows)
        if self.reader_pool not in _POOLS:
            raise ValueError(f"reader_pool must be one of {_POOLS}, got {self.reader_pool!r}")
        if self.reader_workers < 1 or self.retries < 0:
            raise ValueError(
                f"reader_workers must be >= 1 and retries >= 0, got {self.reader_workers}, "
                f"{self.retries}"
            )


class ShardStream:
    """One epoch of one rank's shard: iterate it once, then call :meth:`finish`.

    The footers are read at construction to plan the shard (``mtl_model.shards``);
    the Petastorm reader opens when iteration starts.
    """

    def __init__(
        self,
        files: Sequence[str],
        columns: BatchColumns,
        *,
        rank: int,
        world_size: int,
        settings: StreamSettings,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        self.files = list(files)
        self.columns = columns
        self.settings = settings
        self.storage_options = dict(storage_options or {})
        groups = list_row_groups(self.files, columns.names(), self.storage_options)
        self.plan: ShardPlan = plan_shard(groups, rank, world_size)
        self.read_attempts = 0
        """Petastorm reads this epoch needed so far (1 when nothing went wrong)."""
        self._chunks: Iterator[Columns] | None = None
        self._batches: Generator[StreamBatch, None, None] | None = None

    def expected_rows(self) -> int:
        """Rows this rank reads, from the footers of its row groups."""
        return self.plan.expected_rows

    def expected_batches(self) -> int:
        """Batches this stream yields; all-reduce the MIN over ranks to bound DDP steps."""
        rows, size = self.expected_rows(), self.settings.batch_size
        return rows // size if self.settings.drop_last else math.ceil(rows / size)

    def __iter__(self) -> Iterator[StreamBatch]:
        if self._chunks is not None:
            raise RuntimeError("a ShardStream is read once; make a new one for the next epoch")
        self._chunks = self.verified_chunks()
        self._batches = self._tensor_batches(self._chunks)
        return self._batches

    def finish(self) -> int:
        """Read (and discard) whatever the consumer left, verify the count, return it.

        Raises ``ShardReadError`` when the shard's row count is off after the retries.
        """
        if self._chunks is None:
            self._chunks = self.verified_chunks()
        for _ in self._chunks:
            pass
        if self._batches is not None:
            self._batches.close()
        return self.expected_rows()

    def _tensor_batches(self, chunks: Iterator[Columns]) -> Generator[StreamBatch, None, None]:
        settings = self.settings
        rng = np.random.default_rng([_nonzero_seed(settings.seed), self.plan.rank])
        rebatcher = Rebatcher(
            settings.batch_size, settings.shuffle_buffer_rows, rng, settings.drop_last
        )
        for chunk in chunks:
            for batch in rebatcher.push(chunk):
                yield to_tensors(batch, self.columns)
        for batch in rebatcher.flush():
            yield to_tensors(batch, self.columns)

    def verified_chunks(self) -> Iterator[Columns]:
        """Petastorm's chunks, each row of the shard exactly once, or ``ShardReadError``.

        A read that ends short is retried with the same seed. The dummy pool's order is
        a function of the seed, so a retry skips the rows already delivered and goes on
        from there; the thread pool's order is not, so it is retried only while nothing
        has been delivered. A read that returns more rows than expected raises at once
        (rows would be duplicated).
        """
        expected = self.expected_rows()
        resumable = self.settings.reader_pool == "dummy"
        attempts = self.settings.retries + 1
        delivered = read = 0
        for attempt in range(1, attempts + 1):
            self.read_attempts = attempt
            started = time.monotonic()
            read = 0
            for chunk in self._read_once():
                rows = num_rows(chunk)
                already = max(0, min(rows, delivered - read))
                read += rows
                if read > expected:
                    raise self._error(f"got at least {read} rows, more than")
                if already < rows:
                    delivered += rows - already
                    yield {k: v[already:] for k, v in chunk.items()} if already else chunk
            if read == expected:
                log = _log.warning if attempt > 1 else _log.debug
                log(
                    "rank %d: read attempt %d returned all %d rows in %.2fs",
                    self.plan.rank,
                    attempt,
                    expected,
                    time.monotonic() - started,
                )
                return
            _log.warning(
                "rank %d: read attempt %d/%d returned %d of %d rows (%s pool)",
                self.plan.rank,
                attempt,
                attempts,
                read,
                expected,
                self.settings.reader_pool,
            )
            if delivered and not resumable:
                raise self._error(
                    f"got {read} rows after delivering {delivered}; the "
                    f"{self.settings.reader_pool} pool's order is not reproducible, cannot resume;"
                )
        raise self._error(f"got {read} rows in the last attempt;")

    def _error(self, what: str) -> ShardReadError:
        files = sorted({rg.url for rg in self.plan.row_groups})
        return ShardReadError(
            f"rank {self.plan.rank}/{self.plan.world_size} seed {self.settings.seed} attempt "
            f"{self.read_attempts}: {what} expected {self.expected_rows()} rows from "
            f"{len(self.plan.row_groups)} row groups in {len(files)} files: {files}"
        )

    def _read_once(self) -> Generator[Columns, None, None]:
        if self.plan.reads_nothing:
            return
        settings = self.settings
        reader = make_batch_reader(
            self.files,
            schema_fields=[re.escape(name) for name in self.columns.names()],
            reader_pool_type=settings.reader_pool,
            workers_count=settings.reader_workers,
            # Petastorm reorders the shard whenever a seed is given, even unshuffled.
            seed=_nonzero_seed(settings.seed) if settings.shuffle else None,
            shuffle_rows=settings.shuffle,
            shuffle_row_groups=settings.shuffle,
            num_epochs=1,
            cur_shard=self.plan.rank,
            shard_count=self.plan.shard_count,
            storage_options=self.storage_options or None,
        )
        try:
            for batch in reader:
                yield dict(batch._asdict())
        finally:
            # Not the context manager: its __exit__ prints "Cache cleanup complete.".
            reader.stop()
            reader.join()


def _nonzero_seed(seed: int) -> int:
    """Petastorm treats seed 0 (and None) as "draw a random order": map every seed to 1..2^31-1
    so a re-read repeats the order exactly."""
    return seed % _SEED_MODULUS + 1
