"""Configuration of batch scoring and of the offline report (section ``score``).

``jobs/score_users.py`` reads ``score`` (who is scored, how candidates are drawn, the
slot the recommendations are shown in, how the per-task scores become one ranking
score); ``jobs/report.py`` reads ``score.report``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mtlrec.config import StrictModel
from mtlrec.raw_contract import EVENT_TYPES
from mtlrec.tables import GOLD_RECOMMENDATIONS

_ENGAGEMENT_TYPES = tuple(t for t in EVENT_TYPES if t != "impression")


class CandidateConfig(StrictModel):
    """The candidate rule, in priority order (the first ``per_user`` distinct items win):

    1. recently viewed: the user's latest ``recent_items`` distinct items with a
       ``recent_event_types`` event in the history window, newest first;
    2. popular in the user's top categories: the ``top_categories`` category_l1 values the
       user engaged with most (weighted by ``popularity_weights``), and in each the
       ``items_per_category`` most popular items;
    3. globally popular: the whole catalogue by popularity, which fills every user up to
       ``per_user`` (so each user gets exactly ``per_user`` candidates).

    Popularity of an item = sum of ``popularity_weights`` over its events in the history
    window; ties break by item_id. Only catalogue items created before the scoring day
    are candidates.
    """

    per_user: int = Field(100, gt=0, description="K candidates scored per user.")
    history_days: int = Field(
        14, gt=0, description="Days before the scoring day that popularity and recency use."
    )
    popularity_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "add_to_cart": 2.0, "purchase": 4.0},
        description="Event type -> weight in item popularity and category affinity.",
    )
    top_categories: int = Field(3, ge=0, description="User's top category_l1 values used.")
    items_per_category: int = Field(20, ge=0, description="Popular items per top category.")
    recent_items: int = Field(20, ge=0, description="Recently viewed items per user.")
    recent_event_types: list[str] = Field(
        default_factory=lambda: ["click", "add_to_cart"],
        description="Event types that count as viewing an item.",
    )

    @field_validator("popularity_weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(_ENGAGEMENT_TYPES))
        if unknown:
            raise ValueError(f"event types {unknown} are not among {list(_ENGAGEMENT_TYPES)}")
        if not weights or any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError("give at least one positive weight and no negative ones")
        return weights

    @field_validator("recent_event_types")
    @classmethod
    def _recent(cls, types: list[str]) -> list[str]:
        unknown = sorted(set(types) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"event types {unknown} are not among {list(EVENT_TYPES)}")
        return types


class SlotContext(StrictModel):
    """The context the recommendations are scored in, the same for all of a user's pairs.

    Every value is one training contained (``feature_engineering.scoring``): a configured
    page, device, position or hour that never occurs in the training vocabulary stops the
    job (exit 2). The weekday is the scoring day's. A null field (the default) is unknown
    (index 0), which a model trained with ``model.context_dropout`` learned as the average
    over the slots the log showed a pair in, so the per-task scores keep the logged
    calibration. A model trained without it gets, for a null field, one of the user's own
    logged impressions of the history window, drawn per user and day by a hash (the same
    impression for every null field); users without logged impressions get training's
    most frequent values. A fixed slot (page home, position 1) is rated as if every pair
    were shown first. All of a user's candidates share one slot.
    """

    page: str | None = None
    device: str | None = None
    position: int | None = Field(None, ge=1)
    hour_utc: int | None = Field(
        None, ge=0, le=23, description="Hour of the scoring day the slot is shown at (UTC)."
    )


class FinalScoreConfig(StrictModel):
    """How the per-task scores (``predict``: unconditional) combine into ``final_score``.

    - ``expected_value`` (default): score_<task> x price^price_exponent. With task
      ``purchase`` this is the expected revenue of showing the item:
      p(click) x p(purchase | click) x price = p(purchase) x price, because predict()
      already returns the unconditional p(purchase) = pCTR x pCVR.
    - ``task``: score_<task> alone.
    - ``weighted_sum``: sum over ``weights`` of weight x score_<task>.
    """

    formula: Literal["expected_value", "task", "weighted_sum"] = "expected_value"
    task: str = Field("purchase", description="Task of expected_value and task formulas.")
    price_exponent: float = Field(1.0, ge=0, description="0 ranks by the task's score alone.")
    weights: dict[str, float] = Field(
        default_factory=dict, description="weighted_sum: task -> weight."
    )

    @model_validator(mode="after")
    def _weights_given(self) -> FinalScoreConfig:
        if self.formula == "weighted_sum" and not self.weights:
            raise ValueError("formula weighted_sum needs weights (task -> weight)")
        return self

    def tasks_used(self) -> list[str]:
        return sorted(self.weights) if self.formula == "weighted_sum" else [self.task]


class ReportConfig(StrictModel):
    """The offline evaluation report (``jobs/report.py``)."""

    k: int = Field(10, gt=0, description="Cut-off of Recall@K and NDCG@K.")
    calibration_bins: int = Field(10, ge=2, description="Equal-count bins of the reliability plot.")
    calibration_max_rows: int = Field(
        500_000, gt=0, description="Test rows the calibration plot predicts on (first N)."
    )
    batch_size: int = Field(8192, gt=0, description="Rows per forward pass.")


class ScoringConfig(StrictModel):
    top_k: int = Field(20, gt=0, description="Recommendations kept per user.")
    active_days: int = Field(
        7, gt=0, description="Without --users: users with an event in this many days before."
    )
    model_version: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="None: the first 12 hex digits of the artifact's sha256.",
    )
    batch_size: int = Field(4096, gt=0, description="Rows per forward pass in the workers.")
    torch_threads: int = Field(
        1, gt=0, description="torch intra-op threads per Spark Python worker (one per core)."
    )
    table: str = Field(GOLD_RECOMMENDATIONS, description="Delta table written.")
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    context: SlotContext = Field(default_factory=SlotContext)
    final_score: FinalScoreConfig = Field(default_factory=FinalScoreConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _enough_candidates(self) -> ScoringConfig:
        if self.top_k > self.candidates.per_user:
            raise ValueError(
                f"top_k ({self.top_k}) must not exceed candidates.per_user "
                f"({self.candidates.per_user})"
            )
        return self
