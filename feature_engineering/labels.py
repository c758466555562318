"""Task labels per impression (DESIGN.md 4.3).

- click: a click event of the same user, request_id and item_id;
- add_to_cart / purchase: an event of that type for the same user and item at
  or after the first such click and at most ``attribution_window_hours`` after it;
- purchase_value: log1p(price x quantity) of the first attributed purchase
  (quantity defaults to 1, price to the catalog price), else 0.

Labels are unconditional per impression, so purchase=1 implies click=1. A
purchase can be attributed to several clicked impressions of the same item
within its window; each of them gets the label. ``conversion_attribution``
counts the other side: conversions that no click's window reaches give no label
anywhere, and silver reports them per type so the cost of the window is visible.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

LABEL_COLUMNS = ("label_click", "label_add_to_cart", "label_purchase", "label_purchase_value")
_CLICK_KEYS = ["user_id", "request_id", "item_id"]
CONVERSION_TYPES = ("add_to_cart", "purchase")


def _seconds(column: str) -> Column:
    return F.col(column).cast("double")


def _first_clicks(events: DataFrame) -> DataFrame:
    """The first click of each (user, request, item): what a conversion is attributed to."""
    return (
        events.where((F.col("event_type") == "click") & F.col("request_id").isNotNull())
        .groupBy(*_CLICK_KEYS)
        .agg(F.min("event_ts").alias("click_ts"))
    )


def _in_window(attribution_window_hours: float) -> Column:
    window_s = attribution_window_hours * 3600.0
    return (_seconds("conversion_ts") >= _seconds("click_ts")) & (
        _seconds("conversion_ts") <= _seconds("click_ts") + F.lit(window_s)
    )


def conversion_attribution(
    events: DataFrame, attribution_window_hours: float
) -> dict[str, dict[str, int]]:
    """Per conversion type: how many conversions some clicked impression's label takes
    (``attributed``) and how many none does (``unattributed``: no click of that user on
    that item in the window before it)."""
    conversions = events.where(F.col("event_type").isin(*CONVERSION_TYPES)).select(
        "user_id", "item_id", "event_type", "event_id", F.col("event_ts").alias("conversion_ts")
    )
    clicked = events.where(F.col("event_type") == "impression").select(*_CLICK_KEYS).distinct()
    clicks = _first_clicks(events).join(clicked, _CLICK_KEYS).drop("request_id")
    hit = F.coalesce(_in_window(attribution_window_hours), F.lit(False))
    per_conversion = (
        conversions.join(clicks, ["user_id", "item_id"], "left")
        .groupBy("event_type", "event_id", "conversion_ts", "user_id", "item_id")
        .agg(F.max(hit.cast("int")).alias("hit"))
    )
    rows = (
        per_conversion.groupBy("event_type")
        .agg(
            F.sum("hit").alias("attributed"),
            F.count(F.when(F.col("hit") == 0, 1)).alias("unattributed"),
        )
        .collect()
    )
    counts = {t: {"attributed": 0, "unattributed": 0} for t in CONVERSION_TYPES}
    for row in rows:
        counts[row["event_type"]] = {
            "attributed": int(row["attributed"] or 0),
            "unattributed": int(row["unattributed"]),
        }
    return counts


def impression_labels(events: DataFrame, attribution_window_hours: float) -> DataFrame:
    """``impression_id`` and the four float32 label columns, one row per impression."""
    impressions = events.where(F.col("event_type") == "impression").select(
        F.col("event_id").alias("impression_id"), *_CLICK_KEYS
    )
    clicks = _first_clicks(events)
    conversions = events.where(F.col("event_type").isin(*CONVERSION_TYPES)).select(
        "user_id",
        "item_id",
        "event_type",
        F.col("event_ts").alias("conversion_ts"),
        F.col("event_id").alias("conversion_id"),
        F.log1p(
            F.greatest(
                F.coalesce(F.col("price"), F.col("item_price"), F.lit(0.0))
                * F.coalesce(F.col("quantity"), F.lit(1)).cast("double"),
                F.lit(0.0),
            )
        ).alias("value"),
    )
    in_window = _in_window(attribution_window_hours)
    is_purchase = F.col("event_type") == "purchase"
    attributed = (
        clicks.join(conversions, ["user_id", "item_id"])
        .where(in_window)
        .groupBy(*_CLICK_KEYS)
        .agg(
            F.max((F.col("event_type") == "add_to_cart").cast("int")).alias("cart"),
            F.max(is_purchase.cast("int")).alias("purchase"),
            # First purchase by time, then by id, so ties resolve the same on every run.
            F.min(F.when(is_purchase, F.struct("conversion_ts", "conversion_id", "value"))).alias(
                "first_purchase"
            ),
        )
    )
    clicked = clicks.join(attributed, _CLICK_KEYS, "left")
    labelled = impressions.join(clicked, _CLICK_KEYS, "left")
    return labelled.select(
        "impression_id",
        F.col("click_ts").isNotNull().cast("float").alias("label_click"),
        F.coalesce(F.col("cart"), F.lit(0)).cast("float").alias("label_add_to_cart"),
        F.coalesce(F.col("purchase"), F.lit(0)).cast("float").alias("label_purchase"),
        F.coalesce(F.col("first_purchase.value"), F.lit(0.0))
        .cast("float")
        .alias("label_purchase_value"),
    )
