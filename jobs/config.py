"""The whole pipeline's configuration: every library's section under one root.

Jobs load this (``load_pipeline_config``) so a single YAML file drives the
generator, the feature jobs, training and scoring. Each section's fields and
defaults live in the library that consumes them.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import Field

from feature_engineering.config import FeatureConfig
from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.run_config import TrainRunConfig
from mtl_model.scoring_config import ScoringConfig
from mtl_model.tune_config import TuneConfig
from mtlrec.config import (
    ConfigError,
    LakeConfig,
    RayConfig,
    SparkConfig,
    StrictModel,
    load_config,
)
from mtlrec.synthetic.config import GeneratorConfig


class PipelineConfig(StrictModel):
    lake: LakeConfig = Field(default_factory=LakeConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run: TrainRunConfig = Field(default_factory=TrainRunConfig)
    score: ScoringConfig = Field(default_factory=ScoringConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)


def load_pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """Load from the ``--config`` / ``--set`` arguments added by ``add_config_arguments``."""
    return load_config(PipelineConfig, args.config, args.overrides)


def job_config(args: argparse.Namespace, job: str) -> PipelineConfig:
    """``load_pipeline_config`` for a job's main: a bad config is one clear line and exit 2."""
    try:
        return load_pipeline_config(args)
    except ConfigError as exc:
        print(f"{job}: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
