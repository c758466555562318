"""Configuration of the feature jobs (section ``features``).

Each stage owns one section: ``raw_mapping`` (how a raw log maps onto the
DESIGN.md 4.1 contract), ``bronze`` (parsing and quarantine), ``silver``
(dedup, bots, sessions, negative sampling) and ``gold``. The raw schema is
configuration, not code: a new log format is a new ``raw_mapping`` block.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from feature_engineering.gold_config import GoldConfig
from mtlrec.config import StrictModel
from mtlrec.raw_contract import EVENT_TYPES


class FieldMapping(StrictModel):
    """Source field (JSON key or CSV column) for each canonical field; null = absent.

    ``event_id: null`` derives the id from the line's content (a hash), so an
    exact duplicate line gets the same id and silver removes it.
    """

    event_id: str | None = "event_id"
    ts: str = "ts"
    user_id: str = "user_id"
    session_id: str | None = "session_id"
    event_type: str = "event_type"
    item_id: str = "item_id"
    request_id: str | None = "request_id"
    position: str | None = "position"
    page: str | None = "page"
    device: str | None = "device"
    price: str | None = "price"
    quantity: str | None = "quantity"
    item_category: str | None = Field(
        None, description="Category carried on the event line, for logs without a catalog."
    )


class RawMappingConfig(StrictModel):
    """How one raw log maps onto the canonical event (DESIGN.md 4.1)."""

    format: Literal["jsonl", "csv"] = "jsonl"
    events_dir: str = Field(
        "events", description="Under lake.raw_root; holds dt=YYYY-MM-DD/ day directories."
    )
    file_glob: str = Field("*.jsonl*", description="Files read inside each day directory.")
    csv_columns: list[str] = Field(
        default_factory=list, description="CSV only: the columns in file order."
    )
    csv_header: bool = Field(
        False,
        description="CSV only: the first line of every file names the columns; it is "
        "quarantined as csv_header (with a detail when it differs from csv_columns).",
    )
    csv_delimiter: str = Field(",", min_length=1, description="CSV only; fields are not quoted.")
    fields: FieldMapping = Field(default_factory=FieldMapping)
    ts_epoch_unit: Literal["ms", "s"] = Field(
        "ms", description="Unit of integer timestamps; strings are ISO-8601 otherwise."
    )
    event_types: dict[str, str] = Field(
        default_factory=lambda: {t: t for t in EVENT_TYPES},
        description="Raw event_type value -> canonical type; any other raw value is "
        "quarantined as unknown_event_type.",
    )
    extra_event_types: list[str] = Field(
        default_factory=list,
        description="Canonical types outside the funnel that bronze keeps and silver drops "
        "(counted as dropped_event_types), e.g. 'favorite'.",
    )
    funnel_stages: list[str] = Field(
        default_factory=lambda: list(EVENT_TYPES),
        description="The funnel stages this log records, in order; labels exist for these. "
        "Without 'impression', silver synthesizes impressions by negative sampling.",
    )
    items_dir: str | None = Field(
        "items",
        description="Catalog JSON Lines under raw_root; null derives the catalog from the "
        "events (category from item_category, or unknown when the log has none).",
    )
    users_dir: str | None = Field("users", description="Users JSON Lines; null: no user table.")

    @model_validator(mode="after")
    def _consistent(self) -> RawMappingConfig:
        allowed = set(EVENT_TYPES) | set(self.extra_event_types)
        bad = sorted({v for v in self.event_types.values() if v not in allowed})
        if bad:
            raise ValueError(f"event_types maps to {bad}: not in {EVENT_TYPES} + extra_event_types")
        overlap = sorted(set(self.extra_event_types) & set(EVENT_TYPES))
        if overlap:
            raise ValueError(f"extra_event_types must not repeat funnel types: {overlap}")
        stages = self.funnel_stages
        if not stages or any(s not in EVENT_TYPES for s in stages):
            raise ValueError(f"funnel_stages must be a non-empty subset of {EVENT_TYPES}")
        if stages != [t for t in EVENT_TYPES if t in stages]:
            raise ValueError(f"funnel_stages must follow the funnel order {EVENT_TYPES}")
        if "click" not in stages:
            raise ValueError("funnel_stages must include 'click'")
        mapped = set(self.event_types.values())
        missing = [s for s in stages if s not in mapped]
        if missing:
            raise ValueError(f"funnel_stages {missing} are not produced by event_types")
        if self.format == "csv":
            sources = [v for v in self.fields.model_dump().values() if v is not None]
            unknown = [s for s in sources if s not in self.csv_columns]
            if unknown:
                raise ValueError(f"fields name CSV columns {unknown} absent from csv_columns")
        if self.csv_header and self.format != "csv":
            raise ValueError("csv_header is for format: csv")
        return self

    @property
    def has_impressions(self) -> bool:
        return "impression" in self.funnel_stages


class BronzeConfig(StrictModel):
    """Parsing and quarantine.

    The event-time window: an event whose timestamp falls outside it is quarantined as
    timestamp_out_of_window. ``window: ingest_days`` (the default, for a shipper that
    writes one dt= directory per day) accepts the ingest days of the run, or
    ``window_start..window_end`` when given, +- ``window_tolerance_days``.
    ``window: from_data`` is for a dump whose event days are its content (one folder,
    many days): every parseable timestamp is accepted, bounded only by
    ``window_start..window_end`` (+- tolerance) when they are given.
    """

    max_line_bytes: int = Field(
        65_536,
        gt=0,
        description="Longer lines: line_too_long; only their first max_line_bytes bytes "
        "are read into memory and kept in the quarantine.",
    )
    window: Literal["ingest_days", "from_data"] = Field(
        "ingest_days", description="Where the event-time window comes from (see above)."
    )
    window_start: dt.date | None = Field(
        None, description="First day of the run window; null derives it from the input days."
    )
    window_end: dt.date | None = Field(None, description="Last day (inclusive) of the window.")
    window_tolerance_days: int = Field(
        2, ge=0, description="Days either side of the window before timestamp_out_of_window."
    )
    max_quarantined_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Above this share of a run's lines quarantined, bronze still writes "
        "everything but exits 1 naming the dominant reason and the setting to look at.",
    )

    @model_validator(mode="after")
    def _window(self) -> BronzeConfig:
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError("give both window_start and window_end, or neither")
        if self.window_start and self.window_end and self.window_start > self.window_end:
            raise ValueError("window_start is after window_end")
        return self


class BotConfig(StrictModel):
    """A user is a bot for a day when any threshold is exceeded that day."""

    max_events_per_day: int = Field(450, gt=0)
    max_clicks_per_day: int = Field(200, gt=0)


class NegativeSamplingConfig(StrictModel):
    """Synthetic impressions for logs without them (``impression`` not in funnel_stages)."""

    negatives_per_click: int = Field(4, ge=1)
    draws_per_negative: int = Field(
        3,
        ge=1,
        description="Candidates drawn per wanted negative, before excluding clicked "
        "and repeated items; a click may get fewer negatives when the catalog is tiny.",
    )
    seed: int = 17


class SilverConfig(StrictModel):
    session_gap_minutes: int = Field(30, gt=0)
    context_days: int = Field(
        1,
        ge=0,
        description="Days read either side of the run days so dedup and sessions "
        "see events across midnight; only the run days are written.",
    )
    bots: BotConfig = Field(default_factory=BotConfig)
    negative_sampling: NegativeSamplingConfig = Field(default_factory=NegativeSamplingConfig)


class FeatureConfig(StrictModel):
    raw_mapping: RawMappingConfig = Field(default_factory=RawMappingConfig)
    bronze: BronzeConfig = Field(default_factory=BronzeConfig)
    silver: SilverConfig = Field(default_factory=SilverConfig)
    gold: GoldConfig = Field(default_factory=GoldConfig)
