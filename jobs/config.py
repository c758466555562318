"""The whole pipeline's configuration: every library's section under one root.

Jobs load this (``load_pipeline_config``) so a single YAML file drives the
generator, the feature jobs, training and scoring. Each section's fields and
defaults live in the library that consumes them.
"""

from __future__ import annotations

import argparse

from pydantic import Field

from feature_engineering.config import FeatureConfig
from mtl_model.config import ModelConfig, TrainConfig
from mtlrec.config import LakeConfig, RayConfig, SparkConfig, StrictModel, load_config
from mtlrec.synthetic.config import GeneratorConfig


class PipelineConfig(StrictModel):
    lake: LakeConfig = Field(default_factory=LakeConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def load_pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """Load from the ``--config`` / ``--set`` arguments added by ``add_config_arguments``."""
    return load_config(PipelineConfig, args.config, args.overrides)
