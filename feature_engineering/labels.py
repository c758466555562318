"""Task labels per impression (DESIGN.md 4.3).

- click: a click event of the same user, request_id and item_id;
- add_to_cart / purchase: an event of that type for the same user and item at
  or after the first such click and at most ``attribution_window_hours`` after it;
- purchase_value: log1p(price x quantity) of the first attributed purchase
  (quantity defaults to 1, price to the catalog price), else 0.

Labels are unconditional per impression, so purchase=1 implies click=1. A
purchase can be attributed to several clicked impressions of the same item
within its window; each of them gets the label.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

LABEL_COLUMNS = ("label_click", "label_add_to_cart", "label_purchase", "label_purchase_value")
_CLICK_KEYS = ["user_id", "request_id", "item_id"]


def _seconds(column: str) -> Column:
    return F.col(column).cast("double")


def impression_labels(events: DataFrame, attribution_window_hours: float) -> DataFrame:
    """``impression_id`` and the four float32 label columns, one row per impression."""
    impressions = events.where(F.col("event_type") == "impression").select(
        F.col("event_id").alias("impression_id"), *_CLICK_KEYS
    )
    clicks = (
        events.where((F.col("event_type") == "click") & F.col("request_id").isNotNull())
        .groupBy(*_CLICK_KEYS)
        .agg(F.min("event_ts").alias("click_ts"))
    )
    conversions = events.where(F.col("event_type").isin("add_to_cart", "purchase")).select(
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
    window_s = attribution_window_hours * 3600.0
    in_window = (_seconds("conversion_ts") >= _seconds("click_ts")) & (
        _seconds("conversion_ts") <= _seconds("click_ts") + F.lit(window_s)
    )
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
