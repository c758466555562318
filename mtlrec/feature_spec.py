"""The contract between the feature jobs and the model (``gold/feature_spec``).

The gold job writes one ``FeatureSpec`` per build, as JSON in the
``gold/feature_spec`` Delta table, versioned with the examples it describes.
The model library builds its embedding tables, normalisation and heads from it,
and training, scoring and the report select their columns from it. Nothing
else is allowed to guess column names.

Column conventions in ``gold/examples`` (all listed in the spec):
- categorical features are already mapped to vocabulary indices (int64);
  index 0 is the out-of-vocabulary bucket, so ``vocab_size`` counts it;
- dense features are stored raw (float32); the model normalises them with the
  spec's ``mean``/``std`` so training and scoring share one code path;
- a pretrained embedding (item text) is a group of float32 columns, one per
  dimension, because Petastorm's batch reader streams scalar columns best;
- labels are unconditional per impression (``purchase=1`` implies ``click=1``);
  a task with a ``parent`` is the funnel step after it: its conditional rate
  (e.g. CVR = purchase given click) is learned on rows where the parent is 1.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TaskType = Literal["binary", "regression"]

SPEC_FORMAT_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoricalFeature(_Frozen):
    name: str = Field(description="Column in gold/examples holding int64 vocabulary indices.")
    vocab_size: int = Field(gt=0, description="Number of rows including the OOV row 0.")
    embedding_dim: int = Field(16, gt=0, description="Suggested embedding width.")
    unknown_at_scoring: bool = Field(
        False,
        description="A feature of the slot an impression was shown in (page, position, "
        "device, hour): batch scoring cannot know where and when a recommendation will be "
        "shown, so it may send index 0. Training hides all of a row's such features "
        "together (model.context_dropout), so index 0 is a value the model learned.",
    )


class DenseFeature(_Frozen):
    name: str
    mean: float
    std: float = Field(gt=0)


class EmbeddingFeature(_Frozen):
    """A pretrained vector stored as one float32 column per dimension."""

    name: str
    columns: list[str] = Field(min_length=1)


class TaskSpec(_Frozen):
    name: str
    type: TaskType
    label_column: str
    parent: str | None = Field(
        None, description="Task this one conditions on (funnel step before it), if any."
    )


class FeatureSpec(_Frozen):
    format_version: int = SPEC_FORMAT_VERSION
    id_columns: list[str] = Field(
        default_factory=lambda: ["impression_id", "request_id", "user_id", "item_id"]
    )
    categorical: list[CategoricalFeature] = Field(default_factory=list)
    dense: list[DenseFeature] = Field(default_factory=list)
    embeddings: list[EmbeddingFeature] = Field(default_factory=list)
    tasks: list[TaskSpec] = Field(min_length=1)
    train_days: list[str] = Field(default_factory=list)
    val_days: list[str] = Field(default_factory=list)
    test_days: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_consistency(self) -> FeatureSpec:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names: {names}")
        for task in self.tasks:
            if task.parent is not None and task.parent not in names:
                raise ValueError(f"task {task.name!r} has unknown parent {task.parent!r}")
        columns = self.feature_columns() + self.label_columns()
        if len(set(columns)) != len(columns):
            raise ValueError("a column is listed twice in the feature spec")
        return self

    def feature_columns(self) -> list[str]:
        cols = [f.name for f in self.categorical] + [f.name for f in self.dense]
        for emb in self.embeddings:
            cols.extend(emb.columns)
        return cols

    def label_columns(self) -> list[str]:
        return [t.label_column for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"no task {name!r} in feature spec (tasks: {[t.name for t in self.tasks]})")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.model_validate_json(text)
