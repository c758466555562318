"""Typed, validated configuration shared by every job.

A configuration is a YAML file (``cluster_configs/local.yaml`` by default) plus
``--set key.path=value`` overrides from the command line. Every section is a
pydantic model that forbids unknown keys, so a typo or a wrong type fails at
start-up with the dotted path of the bad field, before any data is touched.

Each library owns the section it consumes (``feature_engineering.config``,
``mtl_model.config``, ...); ``jobs.config.PipelineConfig`` composes them. This
module holds only what every part needs: the strict base model, the lake,
Spark and Ray sections, and the loader.
"""

from __future__ import annotations

import argparse
import re
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mtlrec.errors import InputError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "cluster_configs" / "local.yaml"


class ConfigError(InputError, ValueError):
    """A configuration that cannot be used; the message names the field."""


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced loosely."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class LakeConfig(StrictModel):
    root: str = Field("lake", description="Lake root: a local path or an object-store URI.")
    raw_root: str = Field("data/raw", description="Where the raw JSON Lines logs live.")
    row_group_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Target Parquet row-group size; Petastorm shards by row group, so keep "
        "many more row groups than training workers.",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        repr=False,  # may hold credentials: never in a repr or a log line
        description="delta-rs / object-store options; credentials may also come from the env.",
    )


# A JVM size as spark-submit takes it: a whole number and a unit (512m, 4g).
_JVM_SIZE = r"^[1-9][0-9]*[kmgtKMGT]$"
# Spark keeps 300 MiB of every heap for itself and refuses a heap under 1.5x that
# (UnifiedMemoryManager); `spark.testing.reservedMemory` (bytes) changes the reserve.
_SPARK_RESERVED_BYTES = 300 * 1024 * 1024


def jvm_size_bytes(size: str) -> int:
    """``4g``, ``512m``, ``4096`` (MiB, Spark's unit for a bare driver memory) in bytes."""
    match = re.fullmatch(r"([0-9]+)([kmgtp]?)b?", size.strip().lower())
    if match is None:
        raise ValueError(f"not a JVM size: {size!r}")
    number, unit = match.groups()
    return int(number) * 1024 ** "kmgtp".index(unit or "m") * 1024


class SparkConfig(StrictModel):
    """Spark settings. ``scripts/submit.sh`` passes master, memory, cores and ``conf`` to
    spark-submit, because the driver JVM is started before a job reads its config; a job
    that starts its own JVM (``python -m jobs...``) applies them itself."""

    master: str = Field(
        "local[*]", description="local[N], spark://host:port, yarn, k8s://...; --master wins."
    )
    app_name: str = "mtlrec"
    shuffle_partitions: int = Field(8, gt=0)
    driver_memory: str = Field(
        "4g", pattern=_JVM_SIZE, description="Driver heap; fixed when the driver JVM starts."
    )
    executor_memory: str = Field(
        "1g",
        pattern=_JVM_SIZE,
        description="Heap of each executor on a cluster master (local[*] runs in the driver).",
    )
    executor_cores: int = Field(1, gt=0, description="Cores (task slots) of each executor.")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra spark.* settings.")

    @model_validator(mode="after")
    def _heaps_spark_accepts(self) -> SparkConfig:
        """A driver under Spark's floor fails at start; an executor under it is refused by
        each executor JVM, which a cluster manager then relaunches without end."""
        reserved = int(self.conf.get("spark.testing.reservedMemory", _SPARK_RESERVED_BYTES))
        floor = reserved * 3 // 2
        for name in ("driver_memory", "executor_memory"):
            size = getattr(self, name)
            if jvm_size_bytes(size) < floor:
                raise ValueError(
                    f"spark.{name}={size} is below the {floor >> 20} MiB Spark needs for a "
                    f"heap (1.5x the {reserved >> 20} MiB it reserves): give at least "
                    f"{-(-floor >> 20)}m"
                )
        return self


class RayConfig(StrictModel):
    address: str | None = Field(
        None, description="None starts a local Ray; 'auto' or 'ray://host:port' joins a cluster."
    )
    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    include_dashboard: bool = False
    dashboard_host: str = Field("127.0.0.1", description="Never bind beyond localhost by default.")
    private_network: bool = Field(
        True,
        description="A local run (address unset) with a local lake and run directory runs "
        "in its own network namespace holding only loopback, where Linux allows it, because "
        "Ray's core servers listen on all interfaces (mtlrec.private_network).",
    )


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-typed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got {text!r}")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return [part for part in key.strip().split(".")], value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


_SECRET_FIELD = re.compile(r"secret|token|passw|credential|access[_.-]?key", re.IGNORECASE)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        parts = [str(part) for part in item["loc"]]
        field = ".".join(parts) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown key")
        elif "storage_options" in parts or any(_SECRET_FIELD.search(p) for p in parts):
            # The rejected value may be a credential: name the field, never echo the value.
            lines.append(f"  {field}: {item['msg']} (value hidden)")
        elif isinstance(item.get("input"), dict):  # a whole section: the message names it
            lines.append(f"  {field}: {item['msg']}")
        else:
            lines.append(f"  {field}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_config(
    model: type[ModelT], path: str | Path | None = None, overrides: list[str] | None = None
) -> ModelT:
    """Load YAML at ``path`` (or the local default), apply overrides, validate into ``model``."""
    source = Path(path) if path is not None else DEFAULT_CONFIG
    if not source.is_file():
        raise ConfigError(f"config file not found: {source}")
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must hold a mapping at the top level")
    for text in overrides or []:
        key_path, value = parse_override(text)
        apply_override(data, key_path, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(source))) from None


def iso_day(text: str) -> str:
    """An argparse type for a ``YYYY-MM-DD`` day (the lake's partition format)."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD day: {text!r}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The two arguments every job accepts."""
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="YAML configuration file (default: cluster_configs/local.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one field, e.g. --set spark.shuffle_partitions=16 (repeatable)",
    )
