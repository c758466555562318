"""Typed configuration: the shipped configs load, bad ones fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.config import PipelineConfig
from mtlrec.config import DEFAULT_CONFIG, ConfigError, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "cluster_configs"


def test_local_default_loads_through_the_typed_config() -> None:
    cfg = load_config(PipelineConfig, DEFAULT_CONFIG)
    assert cfg.spark.master == "local[*]"
    assert cfg.ray.address is None and cfg.ray.dashboard_host == "127.0.0.1"
    assert not cfg.ray.include_dashboard


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith(("ray_", "kuberay_"))),
)
def test_every_pipeline_config_file_validates(path: Path) -> None:
    load_config(PipelineConfig, path)


def test_overrides_are_typed_and_applied() -> None:
    cfg = load_config(
        PipelineConfig,
        DEFAULT_CONFIG,
        ["spark.shuffle_partitions=3", "ray.use_gpu=true", "lake.root=/tmp/elsewhere"],
    )
    assert cfg.spark.shuffle_partitions == 3
    assert cfg.ray.use_gpu is True
    assert cfg.lake.root == "/tmp/elsewhere"


def test_unknown_key_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark:\n  shufle_partitions: 4\n")
    with pytest.raises(ConfigError, match=r"spark\.shufle_partitions: unknown key"):
        load_config(PipelineConfig, bad)


def test_wrong_type_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"ray\.num_workers: .*integer"):
        load_config(PipelineConfig, DEFAULT_CONFIG, ["ray.num_workers=two"])
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partitions: .*greater than 0"):
        load_config(PipelineConfig, DEFAULT_CONFIG, ["spark.shuffle_partitions=0"])


def test_malformed_override_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--set expects key\.path=value"):
        load_config(PipelineConfig, DEFAULT_CONFIG, ["spark.master"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PipelineConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not a section"):
        load_config(PipelineConfig, DEFAULT_CONFIG, ["spark.master.x=1"])
