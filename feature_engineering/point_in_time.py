"""Point-in-time user, item and user x item-attribute features.

Every feature "as of day D" is computed only from events *available* before D:
an event's availability day is the later of its event day (``dt``) and the day
it was ingested (``ingest_dt``, the raw ``dt=`` folder its line came from), so
a late arrival counts from the day after it arrived and never leaks into an
earlier day. Windows are measured in event time (an event of day d is in the
w-day window of D when D - w <= d < D), so a line that arrives after the
longest window has passed never counts.

The aggregation avoids a rescan per day: events are first reduced to one row
per (entity, event day, availability day); each such row is then fanned out to
the as-of days it contributes to (from the day after it became available to
``lookback`` days after its event day, restricted to the requested ones) and
summed with conditional aggregates per window. Cost is proportional to active
entity-days x lookback, not to events x days.
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from typing import overload

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from feature_engineering.gold_config import GoldConfig

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
ENGAGEMENT_TYPES = ("click", "add_to_cart", "purchase")
AFFINITY_DIMENSIONS = ("category_l1", "category_l2", "brand")
_EPOCH = "1970-01-01"
_SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class DenseDefaults:
    """Value of each dense feature for an entity with no history in the window."""

    values: dict[str, float]

    def fill(self, frame: DataFrame) -> DataFrame:
        return frame.fillna(dict[str, bool | float | int | str](self.values))


@overload
def day_number(day: str) -> int: ...
@overload
def day_number(day: Column) -> Column: ...
def day_number(day: str | Column) -> int | Column:
    """Days since 1970-01-01 of a 'YYYY-MM-DD' day: of a string in Python, or of a string
    column in Spark (one definition of the epoch for both)."""
    if isinstance(day, str):
        return (dt.date.fromisoformat(day) - dt.date.fromisoformat(_EPOCH)).days
    return F.datediff(F.to_date(day), F.lit(_EPOCH).cast("date"))


def days_before(day: str, count: int) -> list[str]:
    """The ``count`` days strictly before ``day`` (YYYY-MM-DD), oldest first."""
    end = dt.date.fromisoformat(day)
    return [(end - dt.timedelta(days=i)).isoformat() for i in range(count, 0, -1)]


def day_string(day: Column) -> Column:
    """Inverse of ``day_number``."""
    return F.date_format(F.date_add(F.lit(_EPOCH).cast("date"), day), "yyyy-MM-dd")


def day_start_seconds(day: Column) -> Column:
    return day.cast("double") * F.lit(_SECONDS_PER_DAY)


def _count(event_type: str) -> Column:
    return F.sum((F.col("event_type") == event_type).cast("long"))


def _fan_out(daily: DataFrame, as_of_days: list[int], lookback: int) -> DataFrame:
    """Repeat each (entity, day, available) row for every requested as-of day in
    (available, day + lookback]; ``age`` is the as-of day minus the event day."""
    first, last = min(as_of_days), max(as_of_days)
    start = F.greatest(F.col("available") + 1, F.lit(first))
    stop = F.least(F.col("day") + lookback, F.lit(last))
    # The conditions keep start <= stop: F.sequence would count down otherwise.
    return (
        daily.where(
            (F.col("day") + lookback >= first)
            & (F.col("available") < last)
            & (F.col("available") < F.col("day") + lookback)
        )
        .withColumn("as_of_day", F.explode(F.sequence(start, stop)))
        .where(F.col("as_of_day").isin(as_of_days))
        .withColumn("age", F.col("as_of_day") - F.col("day"))
    )


def _within(days: int, column: str) -> Column:
    return F.sum(F.when(F.col("age") <= days, F.col(column)).otherwise(F.lit(0)))


def _smoothed(hits: Column, trials: Column, prior: float, strength: float) -> Column:
    return (hits + F.lit(prior * strength)) / (trials + F.lit(strength))


def _with_events(events: DataFrame) -> DataFrame:
    """``day``: the event day; ``available``: the first day the event was known, the later
    of its event day and its ingest day (a late line is known from the day it arrived)."""
    day = day_number(F.col("dt"))
    return events.withColumn("day", day).withColumn(
        "available", F.greatest(day, day_number(F.col("ingest_dt")))
    )


def _log1p_float(column: Column, name: str) -> Column:
    return F.log1p(column.cast("double")).cast("float").alias(name)


def user_feature_names(cfg: GoldConfig) -> list[str]:
    names = [f"user_log_{t}s_{w}d" for w in cfg.window_days for t in EVENT_TYPES]
    return [
        *names,
        "user_ctr_smoothed",
        "user_cvr_smoothed",
        "user_days_since_last_event",
        "user_days_since_last_click",
        "user_log_mean_click_price",
    ]


def user_defaults(cfg: GoldConfig) -> DenseDefaults:
    values = {name: 0.0 for name in user_feature_names(cfg)}
    values["user_ctr_smoothed"] = cfg.ctr_prior
    values["user_cvr_smoothed"] = cfg.cvr_prior
    values["user_days_since_last_event"] = float(cfg.lookback_days)
    values["user_days_since_last_click"] = float(cfg.lookback_days)
    return DenseDefaults(values)


def _windowed_counts(cfg: GoldConfig) -> list[Column]:
    """Aggregates over ``_fan_out`` rows: counts per window and event type, and the
    impression/click/purchase sums of the rate window (read by ``_counts_and_rates``)."""
    rw = cfg.rate_window_days
    return [
        *[_within(w, f"n_{t}").alias(f"n_{t}_{w}") for w in cfg.window_days for t in EVENT_TYPES],
        _within(rw, "n_impression").alias("rate_impressions"),
        _within(rw, "n_click").alias("rate_clicks"),
        _within(rw, "n_purchase").alias("rate_purchases"),
    ]


def _counts_and_rates(prefix: str, cfg: GoldConfig) -> list[Column]:
    """``<prefix>_log_<type>s_<w>d`` and the smoothed CTR and CVR, from ``_windowed_counts``."""
    smoothed_ctr = _smoothed(
        F.col("rate_clicks"), F.col("rate_impressions"), cfg.ctr_prior, cfg.prior_strength
    )
    smoothed_cvr = _smoothed(
        F.col("rate_purchases"), F.col("rate_clicks"), cfg.cvr_prior, cfg.prior_strength
    )
    return [
        *[
            _log1p_float(F.col(f"n_{t}_{w}"), f"{prefix}_log_{t}s_{w}d")
            for w in cfg.window_days
            for t in EVENT_TYPES
        ],
        smoothed_ctr.cast("float").alias(f"{prefix}_ctr_smoothed"),
        smoothed_cvr.cast("float").alias(f"{prefix}_cvr_smoothed"),
    ]


# Click prices are summed scaled by 2**-64: exact (a power of two), and a sum of finite
# prices then stays finite whatever they are (two of 1e308 overflow a double to inf).
_PRICE_SCALE = 2.0**-64


def user_features(events: DataFrame, as_of_days: list[int], cfg: GoldConfig) -> DataFrame:
    """(user_id, as_of_day, dense user features) for users active in the lookback window.

    A user absent here has no events in the window: use ``user_defaults``.
    Recency is capped at the lookback, so the defaults are exact for them.
    """
    is_click = F.col("event_type") == "click"
    daily = (
        _with_events(events)
        .groupBy("user_id", "day", "available")
        .agg(
            *[_count(t).alias(f"n_{t}") for t in EVENT_TYPES],
            F.max("event_ts").alias("last_ts"),
            F.max(F.when(is_click, F.col("event_ts"))).alias("last_click_ts"),
            F.sum(F.when(is_click, F.col("item_price") * F.lit(_PRICE_SCALE))).alias(
                "click_price_sum"
            ),
            F.sum((is_click & F.col("item_price").isNotNull()).cast("long")).alias("click_priced"),
        )
    )
    lookback = cfg.lookback_days
    rw = cfg.rate_window_days
    grouped = (
        _fan_out(daily, as_of_days, lookback)
        .groupBy("user_id", "as_of_day")
        .agg(
            *_windowed_counts(cfg),
            F.max("last_ts").alias("last_ts"),
            F.max("last_click_ts").alias("last_click_ts"),
            F.sum(F.when(F.col("age") <= rw, F.col("click_price_sum"))).alias("price_sum"),
            _within(rw, "click_priced").alias("price_n"),
        )
    )
    as_of_s = day_start_seconds(F.col("as_of_day"))
    # Scaled back; the mean is at most the largest price, so finite (bar its last bit,
    # which ``least`` takes care of).
    mean_price = F.col("price_sum") / F.col("price_n") / F.lit(_PRICE_SCALE)

    def days_since(column: str) -> Column:
        since = (as_of_s - F.col(column).cast("double")) / F.lit(_SECONDS_PER_DAY)
        return F.coalesce(F.least(since, F.lit(float(lookback))), F.lit(float(lookback)))

    return grouped.select(
        "user_id",
        "as_of_day",
        *_counts_and_rates("user", cfg),
        days_since("last_ts").cast("float").alias("user_days_since_last_event"),
        days_since("last_click_ts").cast("float").alias("user_days_since_last_click"),
        F.coalesce(
            F.log1p(F.least(mean_price, F.lit(sys.float_info.max))).cast("float"),
            F.lit(0.0).cast("float"),
        ).alias("user_log_mean_click_price"),
    )


def item_feature_names(cfg: GoldConfig) -> list[str]:
    names = [f"item_log_{t}s_{w}d" for w in cfg.window_days for t in EVENT_TYPES]
    return [*names, "item_ctr_smoothed", "item_cvr_smoothed"]


def item_defaults(cfg: GoldConfig) -> DenseDefaults:
    values = {name: 0.0 for name in item_feature_names(cfg)}
    values["item_ctr_smoothed"] = cfg.ctr_prior
    values["item_cvr_smoothed"] = cfg.cvr_prior
    return DenseDefaults(values)


def item_features(events: DataFrame, as_of_days: list[int], cfg: GoldConfig) -> DataFrame:
    """(item_id, as_of_day, popularity and smoothed rates) for items with history."""
    daily = (
        _with_events(events)
        .groupBy("item_id", "day", "available")
        .agg(*[_count(t).alias(f"n_{t}") for t in EVENT_TYPES])
    )
    grouped = (
        _fan_out(daily, as_of_days, cfg.lookback_days)
        .groupBy("item_id", "as_of_day")
        .agg(*_windowed_counts(cfg))
    )
    return grouped.select("item_id", "as_of_day", *_counts_and_rates("item", cfg))


def user_affinities(events: DataFrame, as_of_days: list[int], cfg: GoldConfig) -> DataFrame:
    """(user_id, as_of_day, and per dimension d in AFFINITY_DIMENSIONS: ``affinity_counts_<d>``
    map value -> engagement count, ``affinity_total_<d>``, ``user_top_<d>``).

    Engagement events (click, cart, purchase) over the affinity window. The
    user's affinity for a value is counts[value] / total (see ``affinity_share``);
    the top value is the most engaged one, ties broken by the larger value so it
    is deterministic. All dimensions share one fan-out and one aggregation.
    """
    long = (
        _with_events(events)
        .where(F.col("event_type").isin(*ENGAGEMENT_TYPES))
        .select(
            "user_id",
            "day",
            "available",
            F.explode(
                F.array(
                    *[
                        F.struct(F.lit(d).alias("dimension"), F.col(d).alias("value"))
                        for d in AFFINITY_DIMENSIONS
                    ]
                )
            ).alias("kv"),
        )
        .select("user_id", "day", "available", "kv.dimension", "kv.value")
        .where(F.col("value").isNotNull())
    )
    daily = long.groupBy("user_id", "dimension", "value", "day", "available").agg(
        F.count(F.lit(1)).alias("n")
    )
    per_value = (
        _fan_out(daily, as_of_days, cfg.affinity_window_days)
        .groupBy("user_id", "as_of_day", "dimension", "value")
        .agg(F.sum("n").alias("n"))
    )
    aggs = []
    for d in AFFINITY_DIMENSIONS:
        mine = F.col("dimension") == d
        aggs += [
            F.map_from_entries(F.collect_list(F.when(mine, F.struct("value", "n")))).alias(
                f"affinity_counts_{d}"
            ),
            F.sum(F.when(mine, F.col("n"))).alias(f"affinity_total_{d}"),
            F.max(F.when(mine, F.struct("n", "value")))["value"].alias(f"user_top_{d}"),
        ]
    return per_value.groupBy("user_id", "as_of_day").agg(*aggs)


def affinity_share(dimension: str, value: Column) -> Column:
    """The user's share of engagement on ``value`` (0 when none), from ``user_affinities``."""
    counts = F.col(f"affinity_counts_{dimension}")
    share = F.element_at(counts, value) / F.col(f"affinity_total_{dimension}")
    return F.coalesce(share, F.lit(0.0)).cast("float")
