"""Configuration of the synthetic log generator (section ``generator``).

Every knob of the simulated world is a field here: its size, the catalog and
user structure, the behaviour model behind the click -> add_to_cart -> purchase
funnel, the markets, the target base rates and the rate of each defect class.
The defaults are the laptop demo (about 300k lines in well under a minute).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mtlrec.config import StrictModel
from mtlrec.raw_contract import PAGES, QuarantineReason, SilverOutcome


class CatalogConfig(StrictModel):
    """The item side: a 3-level category tree, brands, prices, popularity."""

    top_categories: int = Field(8, gt=0, le=16, description="Level-1 categories (named ones).")
    subcategories_per_category: int = Field(4, gt=0, description="Level-2 nodes per level-1.")
    leaves_per_subcategory: int = Field(3, gt=0, description="Level-3 leaves per level-2.")
    brands_per_category: int = Field(8, gt=0, description="Brands per level-1 category.")
    popularity_exponent: float = Field(
        1.0, gt=0, description="Zipf exponent of item popularity (rank^-exponent)."
    )
    median_price: float = Field(35.0, gt=0, description="Median catalog price.")
    price_spread: float = Field(
        0.9, gt=0, description="Std of log price across leaves, brands and items together."
    )
    cold_item_share: float = Field(
        0.1, ge=0, lt=1, description="Share of items created during the run (cold start)."
    )


class UserConfig(StrictModel):
    """The user side: activity, sessions, devices, cold start."""

    activity_exponent: float = Field(
        1.6, gt=1, description="Pareto exponent of per-user activity (heavier tail when lower)."
    )
    max_activity: float = Field(
        6.0, gt=1, description="Cap on a user's activity relative to the mean user (before "
        "renormalising to mean 1), so that heavy human users stay separable from bots."
    )
    sessions_per_user_day: float = Field(0.3, gt=0, description="Mean sessions of a mean user.")
    requests_per_session: float = Field(3.0, ge=1, description="Mean page views per session.")
    weekend_activity_boost: float = Field(
        1.2, gt=0, description="Session-rate multiplier on Saturdays and Sundays."
    )
    cold_user_share: float = Field(
        0.1, ge=0, lt=1, description="Share of users who sign up during the run."
    )
    session_id_missing_share: float = Field(
        0.05, ge=0, le=1, description="Share of sessions whose producer omits session_id."
    )
    favourite_leaves: int = Field(3, gt=0, description="Leaf categories a user gravitates to.")
    primary_device_share: float = Field(
        0.85, ge=0, le=1, description="Share of a user's sessions on their usual device."
    )


class PageConfig(StrictModel):
    """Page views: how many items each shows and how focused the logging policy is."""

    impressions_min: int = Field(5, gt=0)
    impressions_max: int = Field(20, gt=0)
    page_shares: dict[str, float] = Field(
        default_factory=lambda: {"home": 0.35, "search": 0.25, "category": 0.3, "pdp": 0.1},
        description="Share of page views per page type.",
    )
    page_focus: dict[str, float] = Field(
        default_factory=lambda: {"home": 0.3, "search": 0.75, "category": 0.9, "pdp": 0.6},
        description="Per page type: share of slots filled from the page's context category "
        "(the rest comes from global popularity).",
    )
    favourite_context_share: float = Field(
        0.6, ge=0, le=1, description="Share of page views whose context is a favourite leaf."
    )
    ranking_noise: float = Field(
        1.0, ge=0, description="Gumbel noise scale of the logging policy's popularity ranking."
    )

    @model_validator(mode="after")
    def _check(self) -> PageConfig:
        if self.impressions_max < self.impressions_min:
            raise ValueError("impressions_max must be >= impressions_min")
        for name, mapping in (("page_shares", self.page_shares), ("page_focus", self.page_focus)):
            if set(mapping) != set(PAGES):
                raise ValueError(f"{name} must have exactly the keys {list(PAGES)}")
            if any(not 0 <= value <= 1 for value in mapping.values()):
                raise ValueError(f"{name} values must lie in [0, 1]")
        if abs(sum(self.page_shares.values()) - 1) > 1e-6:
            raise ValueError("page_shares must sum to 1")
        return self


class BehaviorConfig(StrictModel):
    """The latent model behind the funnel (weights act on standardised latent inputs)."""

    latent_dim: int = Field(16, gt=1, description="Width of user and item taste vectors.")
    click_affinity_weight: float = 1.3
    click_quality_weight: float = 0.4
    click_price_weight: float = 0.3
    add_to_cart_affinity_weight: float = 0.7
    add_to_cart_price_weight: float = 0.8
    purchase_affinity_weight: float = 0.5
    purchase_price_weight: float = 1.0
    position_bias_exponent: float = Field(
        0.6, ge=0, description="Examination probability of slot k is k^-exponent."
    )
    category_drift_std: float = Field(
        0.06, ge=0, description="Daily random-walk step of each level-1 category's appeal."
    )
    market_taste_divergence: float = Field(
        0.4, ge=0, description="Std of each market's log-preference tilt over level-1 categories."
    )
    attribution_window_hours: float = Field(
        24.0, gt=0, description="Carts and purchases follow their click within this window."
    )
    fast_conversion_minutes: float = Field(
        4.0, gt=0, description="Mean delay of the typical (fast) click->cart and cart->purchase."
    )
    slow_conversion_share: float = Field(
        0.12, ge=0, le=1, description="Share of conversions delayed up to the window's end."
    )
    extra_quantity_mean: float = Field(
        0.3, ge=0, description="Purchase quantity is 1 + Poisson(extra_quantity_mean)."
    )
    click_dwell_seconds: float = Field(8.0, gt=0, description="Mean impression->click delay.")
    request_gap_seconds: float = Field(45.0, gt=0, description="Mean gap between page views.")


class BaseRates(StrictModel):
    """Target funnel rates of a market with scale 1 (intercepts are calibrated to them)."""

    click: float = Field(0.035, gt=0, lt=1, description="Click-through rate of impressions.")
    add_to_cart_given_click: float = Field(0.10, gt=0, lt=1)
    purchase_given_click: float = Field(0.025, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> BaseRates:
        if self.purchase_given_click >= self.add_to_cart_given_click:
            raise ValueError("purchase_given_click must be below add_to_cart_given_click "
                             "(a purchase implies an add_to_cart)")
        return self


class MarketConfig(StrictModel):
    """One market: shares the world's structure, differs in size, base rates and clock."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,15}$")
    user_share: float = Field(gt=0, description="Relative size (normalised over markets).")
    click_scale: float = Field(1.0, gt=0, description="Multiplies rates.click.")
    conversion_scale: float = Field(1.0, gt=0, description="Multiplies the post-click rates.")
    utc_offset_hours: int = Field(0, ge=-12, le=14, description="Shifts the daily cycle.")


def _default_markets() -> list[MarketConfig]:
    return [
        MarketConfig(name="us", user_share=0.5, click_scale=1.0, conversion_scale=1.1,
                     utc_offset_hours=-5),
        MarketConfig(name="de", user_share=0.3, click_scale=1.2, conversion_scale=0.9,
                     utc_offset_hours=1),
        MarketConfig(name="br", user_share=0.2, click_scale=0.8, conversion_scale=0.8,
                     utc_offset_hours=-3),
    ]


class DirtConfig(StrictModel):
    """Defect rates, each a share of the clean lines of a partition, plus the bots.

    There is one rate per ``QuarantineReason`` and per ``SilverOutcome`` (bots excepted,
    which are sized by ``bot_user_share`` and their activity); field names equal the
    reason codes so the manifest and the bronze job speak the same language.
    """

    invalid_encoding: float = Field(0.0003, ge=0, le=0.2)
    line_too_long: float = Field(0.0, ge=0, le=0.2)
    truncated_json: float = Field(0.0003, ge=0, le=0.2)
    not_json: float = Field(0.0003, ge=0, le=0.2)
    not_an_object: float = Field(0.0003, ge=0, le=0.2)
    missing_required_field: float = Field(0.0003, ge=0, le=0.2)
    wrong_type: float = Field(0.0003, ge=0, le=0.2)
    bad_timestamp: float = Field(0.0003, ge=0, le=0.2)
    timestamp_out_of_window: float = Field(0.0003, ge=0, le=0.2)
    unknown_event_type: float = Field(0.0003, ge=0, le=0.2)
    negative_price: float = Field(0.0003, ge=0, le=0.2)
    invalid_number: float = Field(0.0003, ge=0, le=0.2)
    duplicate_event: float = Field(0.002, ge=0, le=0.2)
    unknown_item: float = Field(0.0005, ge=0, le=0.2)
    late_arrival: float = Field(0.001, ge=0, le=0.2, description="Share of real events of a "
                                "day (all but the last) written into the next day's file.")
    bot_user_share: float = Field(
        0.0005, ge=0, le=0.1, description="Bots per real user (at least one when > 0)."
    )
    bot_events_per_day: int = Field(
        800, gt=0, description="Mean events of a bot's active day (humans stay below ~400)."
    )
    bot_click_share: float = Field(0.2, ge=0, le=1, description="Share of bot impressions "
                                   "followed by a click (humans: a few percent).")
    bot_active_day_share: float = Field(
        0.15, ge=0, le=1, description="Share of the days each bot is active (at least one)."
    )
    long_line_bytes: int = Field(
        2_000_000, gt=0, description="Length of an injected line_too_long line (must exceed "
        "the bronze job's line limit)."
    )

    def rate(self, defect: str) -> float:
        """The configured rate of one line-level defect class (a reason code)."""
        return float(getattr(self, defect))


LINE_DEFECTS: tuple[str, ...] = (
    *(reason.value for reason in QuarantineReason),
    SilverOutcome.DUPLICATE_EVENT.value,
    SilverOutcome.UNKNOWN_ITEM.value,
    SilverOutcome.LATE_ARRIVAL.value,
)
"""Every defect class sized by a rate in ``DirtConfig`` (bots are sized by user count)."""

_missing_rates = [name for name in LINE_DEFECTS if name not in DirtConfig.model_fields]
if _missing_rates:  # the raw contract grew a reason code the generator cannot inject yet
    raise ImportError(f"DirtConfig lacks a rate for defect classes {_missing_rates}")


class GeneratorConfig(StrictModel):
    seed: int = Field(7, ge=0)
    num_users: int = Field(2_000, gt=0)
    num_items: int = Field(1_000, gt=0)
    num_days: int = Field(14, gt=1)
    start_date: str = Field("2026-10-01", description="First day (UTC), YYYY-MM-DD.")
    truth_root: str = Field(
        "data/truth", description="Ground truth root, apart from the raw logs."
    )
    processes: int | None = Field(
        None, gt=0, description="Worker processes; None = CPU count. Output does not depend "
        "on it."
    )
    users_per_shard: int = Field(
        10_000, gt=0, description="Users per (day, shard) partition: bounds a worker's memory "
        "(about 250 MB per worker at the default activity)."
    )
    compression: Literal["none", "gzip"] = Field("none", description="Event files' codec.")
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    users: UserConfig = Field(default_factory=UserConfig)
    pages: PageConfig = Field(default_factory=PageConfig)
    behavior: BehaviorConfig = Field(default_factory=BehaviorConfig)
    rates: BaseRates = Field(default_factory=BaseRates)
    markets: list[MarketConfig] = Field(default_factory=_default_markets, min_length=1)
    dirt: DirtConfig = Field(default_factory=DirtConfig)

    @field_validator("start_date")
    @classmethod
    def _check_date(cls, value: str) -> str:
        try:
            dt.date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"start_date must be YYYY-MM-DD: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check(self) -> GeneratorConfig:
        names = [market.name for market in self.markets]
        if len(set(names)) != len(names):
            raise ValueError(f"market names must be unique, got {names}")
        if self.users.favourite_leaves > self.num_leaves:
            raise ValueError("users.favourite_leaves exceeds the number of leaf categories")
        return self

    @property
    def num_leaves(self) -> int:
        catalog = self.catalog
        return (catalog.top_categories * catalog.subcategories_per_category
                * catalog.leaves_per_subcategory)

    @property
    def start(self) -> dt.date:
        return dt.date.fromisoformat(self.start_date)
