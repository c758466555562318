"""Part 2: the training input path (Petastorm shard stream) against the format's limit.

- Rows/s of one worker (rank 0 of 1) reading the train split of ``gold/examples`` with
  ``mtl_model.streaming.ShardStream`` (dummy pool) into tensors, read as training reads it
  (``run`` section: shuffled row groups and rows, local shuffle buffer) and unshuffled,
  against pyarrow reading the same files' same columns straight into tensors of the same
  batch size (``to_tensors``, the batch contract): what the Parquet files allow here.
- The share of a training epoch spent waiting for data: ``EpochStats.data_wait_share`` of
  ``mtl_model.loop.train_epoch`` over a ``ShardStream``, against the same epoch over the
  same batches already in memory; the epoch-time ratio says what streaming costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import pyarrow.parquet as pq
import torch

from benchmarks.context import BenchContext
from benchmarks.harness import Figure, PartResult, median, paired_ratio, rates, time_interleaved
from jobs.config import PipelineConfig
from mtl_model.features import Batch
from mtl_model.streaming import (
    BatchColumns,
    ShardStream,
    StreamSettings,
    split_file_urls,
    to_tensors,
)
from mtlrec.feature_spec import FeatureSpec
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake

TITLE = "Loader: Petastorm shard stream vs pyarrow, data wait in training"


def stream_settings(cfg: PipelineConfig, batch_size: int, shuffle: bool) -> StreamSettings:
    """A training epoch's stream settings from the ``run`` section (as the Ray worker builds
    them), optionally without shuffling."""
    return StreamSettings(
        batch_size=batch_size,
        seed=cfg.train.seed * 1_000_003,
        shuffle=shuffle,
        shuffle_buffer_rows=cfg.run.shuffle_buffer_rows if shuffle else 0,
        reader_pool="dummy",
        retries=cfg.run.read_retries,
    )


def arrow_batches(
    files: list[str], columns: BatchColumns, batch_size: int
) -> Iterable[dict[str, Any]]:
    """The files' columns in file order, cut into ``batch_size`` tensor batches by pyarrow."""
    import pyarrow.fs as pafs

    names = columns.names()
    for uri in files:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_file(path) as handle:
            for record_batch in pq.ParquetFile(handle).iter_batches(
                batch_size=batch_size, columns=names
            ):
                chunk = {n: record_batch.column(n).to_numpy(zero_copy_only=False) for n in names}
                yield to_tensors(chunk, columns)


def count_rows(batches: Iterable[dict[str, Any]]) -> int:
    return sum(len(next(iter(b.values()))) for b in batches)


def load_spec(lake: Lake) -> FeatureSpec:
    return GoldSnapshot.resolve(lake).spec


def run(ctx: BenchContext) -> PartResult:
    profile = ctx.profile
    cfg = ctx.shared_config()
    lake = Lake.from_config(cfg.lake)
    spec = load_spec(lake)
    files = split_file_urls(lake, "train")
    columns = BatchColumns.from_spec(spec)
    size = cfg.train.batch_size
    result = PartResult(key="2", title=TITLE)

    def stream(shuffle: bool) -> ShardStream:
        return ShardStream(
            files, columns, rank=0, world_size=1,
            settings=stream_settings(cfg, size, shuffle),
            storage_options=lake.storage_options,
        )

    def read_stream(shuffle: bool) -> Callable[[], int]:
        def side() -> int:
            s = stream(shuffle)
            rows = count_rows(s)
            s.finish()
            return rows
        return side

    rows = stream(False).expected_rows()
    ctx.log(f"part 2: reading {rows:,} train rows, three ways")
    seconds = time_interleaved(
        {
            "petastorm_training": read_stream(True),
            "petastorm_plain": read_stream(False),
            "pyarrow": lambda: count_rows(arrow_batches(files, columns, size)),
        },
        profile.repeats,
    )
    row_rates = {name: rates(rows, s) for name, s in seconds.items()}
    arrow_rate = median(row_rates["pyarrow"])
    for name, label in (
        ("petastorm_training", "ShardStream as training reads (shuffled, buffer "
                               f"{cfg.run.shuffle_buffer_rows:,} rows)"),
        ("petastorm_plain", "ShardStream unshuffled"),
    ):
        result.figures.append(
            Figure(
                name=f"{label}, 1 worker",
                value=median(row_rates[name]),
                unit="rows/s",
                runs=profile.repeats,
                baseline="pyarrow -> tensors, same files and columns",
                baseline_value=arrow_rate,
                ratio=paired_ratio(row_rates[name], row_rates["pyarrow"]),
                note=f"{rows:,} rows, {len(columns.names())} columns, batch {size}",
            )
        )
    result.figures.extend(_data_wait(ctx, cfg, spec, stream))
    result.notes.append(
        "Training for the data-wait figures runs in this process (no Ray), one epoch of the "
        f"configured model ({cfg.model.architecture}) with torch threads = "
        f"{_threads(cfg)} (ray.cpus_per_worker), fresh weights each run."
    )
    return result


def _threads(cfg: PipelineConfig) -> int:
    return cfg.run.torch_threads_per_worker or max(1, int(cfg.ray.cpus_per_worker))


def _data_wait(
    ctx: BenchContext,
    cfg: PipelineConfig,
    spec: FeatureSpec,
    stream: Callable[[bool], ShardStream],
) -> list[Figure]:
    from mtl_model.architectures import build_model
    from mtl_model.loop import build_optimizer, train_epoch
    from mtl_model.losses import build_weighting

    threads = torch.get_num_threads()
    torch.set_num_threads(_threads(cfg))
    train_cfg = cfg.train
    in_memory = list(stream(True))
    shares: dict[str, list[float]] = {"stream": [], "memory": []}

    def epoch(source: str) -> None:
        torch.manual_seed(train_cfg.seed)
        model = build_model(spec, cfg.model)
        weighting = build_weighting(model, train_cfg.weighting)
        optimizer = build_optimizer(model, weighting, train_cfg)
        batches: Iterable[Batch]
        if source == "stream":
            live = stream(True)
            batches = cast(Iterable[Batch], live)
        else:
            batches = cast(Iterable[Batch], in_memory)
        stats = train_epoch(model, batches, optimizer, weighting, train_cfg)
        if source == "stream":
            live.finish()
        shares[source].append(stats.data_wait_share)

    ctx.log("part 2: training epochs, streamed vs in memory")
    try:
        seconds = time_interleaved(
            {"stream": lambda: epoch("stream"), "memory": lambda: epoch("memory")},
            ctx.profile.repeats,
        )
    finally:
        torch.set_num_threads(threads)
    runs = ctx.profile.repeats
    return [
        Figure(
            name="data-wait share of a training epoch, Petastorm stream",
            value=median(shares["stream"]),
            unit="share",
            runs=runs,
            baseline="same epoch, batches already in memory",
            baseline_value=median(shares["memory"]),
            note="EpochStats.data_wait_share (a share of the same epoch)",
        ),
        Figure(
            name="training epoch time, Petastorm stream",
            value=median(seconds["stream"]),
            unit="s",
            runs=runs,
            baseline="same epoch, batches already in memory",
            baseline_value=median(seconds["memory"]),
            ratio=paired_ratio(seconds["stream"], seconds["memory"]),
            note=f"{len(in_memory)} steps of batch {cfg.train.batch_size}",
        ),
    ]

