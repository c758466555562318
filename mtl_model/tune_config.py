"""The hyperparameter search (section ``tune``): what ``jobs.tune`` varies and how it stops.

A search-space entry names a dotted path into the ``model:`` or ``train:`` section (the two
sections a training run's bundle holds) and a distribution over its values:

    tune:
      search_space:
        train.lr: {kind: loguniform, low: 3.0e-4, high: 1.0e-2}
        model.num_experts: {kind: choice, values: [2, 4, 8]}

Each entry is checked against the section's own typed model when the config loads: an
unknown path, or a value (a choice, a range end) the section refuses, is a config error
naming the entry, before any data is read or any Ray process starts. There is no
sequence-length knob to search yet (the model has no behaviour sequences).
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, model_validator

from mtl_model.config import ModelConfig, TrainConfig
from mtlrec.config import StrictModel

SECTIONS: dict[str, type[BaseModel]] = {"model": ModelConfig, "train": TrainConfig}
"""The sections a search may vary, by their name in the pipeline config."""

NOT_SEARCHABLE = {
    "train.epochs": "trials train tune.asha.max_epochs epochs (ASHA stops them earlier)",
}


class Choice(StrictModel):
    """One of ``values``, drawn uniformly."""

    kind: Literal["choice"]
    values: list[Any] = Field(min_length=1, description="The candidates (any YAML value).")

    def candidates(self) -> list[Any]:
        return list(self.values)


class _Range(StrictModel):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def candidates(self) -> list[Any]:
        return [self.low, self.high]


class Uniform(_Range):
    """A float drawn uniformly from [low, high]."""

    kind: Literal["uniform"]


class LogUniform(_Range):
    """A float drawn uniformly in log space from [low, high], both > 0 (learning rates)."""

    kind: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


Distribution = Annotated[Choice | Uniform | LogUniform, Field(discriminator="kind")]


def _nested(path: list[str], value: Any) -> dict[str, Any]:
    """``["a", "b"], 1`` -> ``{"a": {"b": 1}}``."""
    node: Any = value
    for part in reversed(path):
        node = {part: node}
    return dict(node)


def _takes_float(section: type[BaseModel], path: list[str]) -> bool:
    """Whether the field at ``path`` (known to validate) takes floats, so a range fits it.

    The path walks config models by field and ``dict`` fields by key (``task_weights``).
    """
    annotation: Any = section
    for part in path:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = annotation.model_fields[part].annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return False
    if typing.get_origin(annotation) is Annotated:  # a constrained float, e.g. >= 0
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is Union:
        return float in typing.get_args(annotation)
    return bool(annotation is float)


def check_entry(path: str, distribution: Choice | Uniform | LogUniform) -> None:
    """Raise ``ValueError`` naming ``path`` unless its section accepts every candidate."""
    root, _, rest = path.partition(".")
    if root not in SECTIONS or not rest:
        raise ValueError(
            f"search_space.{path}: a path into {' or '.join(SECTIONS)} is needed, "
            "e.g. train.lr or model.num_experts"
        )
    if path in NOT_SEARCHABLE:
        raise ValueError(f"search_space.{path} cannot be searched: {NOT_SEARCHABLE[path]}")
    section, parts = SECTIONS[root], rest.split(".")
    for value in distribution.candidates():
        try:
            section.model_validate(_nested(parts, value))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join([root, *(str(p) for p in first["loc"])])
            reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ValueError(
                f"search_space.{path}: {value!r} is refused ({where}: {reason})"
            ) from None
    if not isinstance(distribution, Choice) and not _takes_float(section, parts):
        raise ValueError(
            f"search_space.{path}: {distribution.kind} draws floats, which {path} does not "
            "take: use {kind: choice, values: [...]}"
        )


class AshaConfig(StrictModel):
    """Asynchronous successive halving: trials that lag at a rung stop early."""

    max_epochs: int = Field(
        3,
        gt=0,
        description="Epochs of a trial that is never stopped (ASHA's max_t); every "
        "trial trains with train.epochs set to this.",
    )
    grace_epochs: int = Field(
        1, gt=0, description="Epochs every trial runs before ASHA may stop it (grace period)."
    )
    reduction_factor: float = Field(
        2.0, gt=1, description="At each rung only the best 1/reduction_factor trials go on."
    )

    @model_validator(mode="after")
    def _grace_within_max(self) -> AshaConfig:
        if self.grace_epochs > self.max_epochs:
            raise ValueError(
                f"grace_epochs ({self.grace_epochs}) must not exceed max_epochs ({self.max_epochs})"
            )
        return self


class TuneConfig(StrictModel):
    """A Ray Tune search over ``model.*`` and ``train.*`` values (``python -m jobs.tune``)."""

    name: str | None = Field(
        None,
        description="Directory of the search under run.storage_path; None = tune-<UTC timestamp>.",
    )
    search_space: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Dotted path into model or train -> {kind: choice, values: [...]} | "
        "{kind: uniform, low, high} | {kind: loguniform, low, high}. Paths left out keep "
        "this config's value.",
    )
    num_samples: int = Field(8, gt=0, description="Trials drawn from the search space.")
    metric: str = Field(
        "val/click/auc",
        pattern=r"^val/[^/]+/[^/]+$",
        description="Validation metric the search ranks trials by: val/<task>/<metric>, "
        "e.g. val/click/auc, val/purchase_value/rmse.",
    )
    mode: Literal["max", "min"] = Field("max", description="Whether a higher metric wins.")
    asha: AshaConfig = Field(default_factory=AshaConfig)
    max_concurrent_trials: int = Field(
        1,
        gt=0,
        description="Trials training at once; each holds ray.num_workers workers "
        "of ray.cpus_per_worker CPUs, plus trial_cpus for its driver.",
    )
    trial_cpus: float = Field(
        0.25,
        gt=0,
        description="CPUs reserved for each trial's driver, which launches the trial's Ray "
        "Train workers (they reserve ray.cpus_per_worker each) and then only waits. A local "
        "Ray is sized to hold max_concurrent_trials trials at once.",
    )
    seed: int = Field(0, description="Seed of the search's draws (trials keep train.seed).")

    @model_validator(mode="after")
    def _entries_the_sections_accept(self) -> TuneConfig:
        for path, distribution in self.search_space.items():
            check_entry(path, distribution)
        return self
