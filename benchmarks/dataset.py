"""Benchmark data: synthetic logs sized in raw lines, and the feature tables built from them.

Every dataset lives in its own directory under the run's work directory:
``<dir>/raw`` (the log), ``<dir>/truth`` (the generator's ground truth) and
``<dir>/lake`` (Delta tables). The pipeline configuration is the profile's config
file with those three roots redirected, plus the overrides the caller adds.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bench_generator import TreeRssSampler
from jobs.config import PipelineConfig
from mtlrec.config import load_config
from mtlrec.synthetic.generate import GenerationSummary, generate


@dataclass(frozen=True)
class DatasetPaths:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def truth(self) -> Path:
        return self.root / "truth"

    @property
    def lake(self) -> Path:
        return self.root / "lake"


def dataset_overrides(paths: DatasetPaths) -> list[str]:
    """Config overrides that point the lake, raw and truth roots under ``paths``."""
    return [
        f"lake.root={paths.lake}",
        f"lake.raw_root={paths.raw}",
        f"generator.truth_root={paths.truth}",
    ]


def pipeline_config(
    config_file: str, paths: DatasetPaths, overrides: Sequence[str] = ()
) -> PipelineConfig:
    """The profile's pipeline config with the lake, raw and truth roots under ``paths``."""
    return load_config(PipelineConfig, config_file, [*dataset_overrides(paths), *overrides])


def generator_overrides(users: int, days: int) -> list[str]:
    return [f"generator.num_users={users}", f"generator.num_days={days}"]


def lines_per_user(config_file: str, scratch: Path, users: int, days: int) -> float:
    """Raw lines per user over ``days``, from a small probe run of the generator."""
    paths = DatasetPaths(scratch / "calibration")
    cfg = pipeline_config(config_file, paths, generator_overrides(users, days))
    summary = generate(cfg.generator, paths.raw, paths.truth, overwrite=True, log=lambda _: None)
    shutil.rmtree(paths.root, ignore_errors=True)
    return summary.total_lines / users


@dataclass(frozen=True)
class Generated:
    summary: GenerationSummary
    seconds: float
    peak_rss_bytes: int


def generate_log(cfg: PipelineConfig, paths: DatasetPaths) -> Generated:
    """Write the log and truth (replacing an earlier one), measured the way
    benchmarks/bench_generator.py measures it: wall time and the process tree's peak RSS."""
    with TreeRssSampler() as sampler:
        started = time.perf_counter()
        summary = generate(cfg.generator, paths.raw, paths.truth, overwrite=True,
                           log=lambda _: None)
        seconds = time.perf_counter() - started
    return Generated(summary, seconds, sampler.peak_bytes)
