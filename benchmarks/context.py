"""What every benchmark part receives: the profile, where to work, and how to report progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dataset import DatasetPaths, dataset_overrides, pipeline_config
from benchmarks.profiles import BenchProfile
from jobs.config import PipelineConfig


@dataclass(frozen=True)
class BenchContext:
    profile: BenchProfile
    workdir: Path
    """Scratch space of this run (datasets, lakes, training runs); removed by nothing here."""
    log: Callable[[str], None]
    dataset: DatasetPaths | None = None
    """The shared dataset of parts 2-5 (raw log, truth, lake with gold tables), once built."""

    def config(self, paths: DatasetPaths, extra: Sequence[str] = ()) -> PipelineConfig:
        """The profile's pipeline config for a dataset at ``paths``."""
        return pipeline_config(
            self.profile.config, paths, [*self.profile.pipeline_overrides, *extra]
        )

    def shared_config(self, extra: Sequence[str] = ()) -> PipelineConfig:
        if self.dataset is None:
            raise RuntimeError("the shared dataset of parts 2-5 has not been built")
        return self.config(self.dataset, extra)

    def job_arguments(self, extra: Sequence[str] = ()) -> list[str]:
        """``--config``/``--set`` arguments that make a job's main see ``shared_config(extra)``."""
        if self.dataset is None:
            raise RuntimeError("the shared dataset of parts 2-5 has not been built")
        overrides = [*dataset_overrides(self.dataset), *self.profile.pipeline_overrides, *extra]
        return ["--config", self.profile.config,
                *[arg for override in overrides for arg in ("--set", override)]]

    def part_dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path
