"""Benchmark profiles: every size and count a run uses, validated, in one place.

``quick`` fits in about 15 minutes on a 2-core machine; ``full`` is the documented
reference run (benchmarks/README.md). Override any field with ``--set field=value``
(e.g. ``--set repeats=5``).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from benchmarks.harness import MIN_REPEATS
from mtlrec.config import StrictModel


class BenchProfile(StrictModel):
    name: str
    repeats: int = Field(MIN_REPEATS, ge=MIN_REPEATS, description="Runs behind every median.")
    config: str = Field(
        "cluster_configs/local.yaml",
        description="Pipeline config every job runs with (lake/raw/truth roots are redirected "
        "into the work directory).",
    )
    pipeline_overrides: list[str] = Field(
        default_factory=list,
        description="--set overrides (key.path=value) every job of the run gets.",
    )
    generator_days: int = Field(
        7, ge=3, description="Days of synthetic log (at least one each of train, val, test)."
    )
    calibration_users: int = Field(
        300, gt=0, description="Users of the probe run that measures lines per user."
    )
    # part 1
    feature_lines: list[int] = Field(
        min_length=3, description="Part 1: target raw lines of the three feature-job sizes."
    )
    # parts 2-5 share one dataset: generated, then built by the feature job once
    dataset_lines: int = Field(gt=0, description="Target raw lines of the shared dataset.")
    # part 3
    train_epochs: int = Field(2, gt=0, description="Ray runs; samples/s of the last epoch.")
    # part 4
    quality_epochs: int = Field(2, gt=0)
    quality_torch_threads: int = Field(
        1, gt=0, description="Torch threads of the in-process quality runs (AUCs do not depend "
        "on it; more threads than free cores slow a shared machine down badly)."
    )
    transfer_source_markets: list[str] = Field(default_factory=lambda: ["us", "de"])
    transfer_target_market: str = "br"
    transfer_target_rows: int = Field(
        20_000, gt=0, description="Small target-market training set of the warm/cold runs."
    )
    student_expert_hidden: list[int] = Field(default_factory=lambda: [16])
    student_num_experts: int = Field(2, gt=0)
    student_tower_hidden: list[int] = Field(default_factory=lambda: [8])
    student_embedding_dim: int = Field(4, gt=0)
    # part 5
    scoring_pairs: list[int] = Field(
        default_factory=lambda: [10_000],
        min_length=1,
        description="Part 5: user-item pairs scored per row: pairs / score.candidates.per_user "
        "users, or every user of the dataset with as many candidates each as it takes when "
        "it holds fewer (a small size shows fixed costs; >= 1M pairs the cost per pair).",
    )

    @field_validator("feature_lines")
    @classmethod
    def _ascending(cls, values: list[int]) -> list[int]:
        if sorted(set(values)) != values or values[0] <= 0:
            raise ValueError(f"must be positive and strictly ascending, got {values}")
        return values


PROFILES: dict[str, BenchProfile] = {
    "quick": BenchProfile(
        name="quick",
        pipeline_overrides=["spark.shuffle_partitions=2"],
        feature_lines=[20_000, 40_000, 80_000],
        dataset_lines=80_000,
        train_epochs=2,
        quality_epochs=2,
        transfer_target_rows=10_000,
        scoring_pairs=[10_000],
    ),
    "full": BenchProfile(
        name="full",
        generator_days=14,
        feature_lines=[1_000_000, 3_000_000, 10_000_000],
        dataset_lines=1_000_000,
        train_epochs=3,
        quality_epochs=4,
        transfer_target_rows=50_000,
        scoring_pairs=[10_000, 250_000, 1_000_000],
    ),
}
