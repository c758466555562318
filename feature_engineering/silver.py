"""Silver: dedup, sessions, bots, catalog join (+ synthetic impressions when needed).

Reads ``bronze/events`` for the run days plus ``context_days`` either side (so a
duplicate delivered on another day, or a session crossing midnight, is seen),
and writes exactly the run days of ``silver/events`` and ``silver/bot_events``;
``silver/items`` and ``silver/users`` are small and replaced whole.

Bots are flagged per user and day: a user-day over any ``silver.bots``
threshold moves all that user's events of that day to ``silver/bot_events``
with the reason, nothing is deleted. Events of items missing from the catalog
stay, with ``item_known = false`` and null catalog columns. Event types outside
the funnel (``raw_mapping.extra_event_types``) are dropped here and counted.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from feature_engineering.behavior_log import synthesize_impressions
from feature_engineering.catalog import ITEM_COLUMNS, USER_COLUMNS, load_items, load_users
from feature_engineering.config import BotConfig, FeatureConfig
from feature_engineering.labels import conversion_attribution
from feature_engineering.sessionize import sessionize
from mtlrec.errors import InputError
from mtlrec.lake import CommitResult, Lake, PartitionFilter
from mtlrec.log import get_logger, log_stage
from mtlrec.raw_contract import EVENT_TYPES
from mtlrec.tables import (
    BRONZE_EVENTS,
    SILVER_BOT_EVENTS,
    SILVER_EVENTS,
    SILVER_ITEMS,
    SILVER_USERS,
)

SILVER_EVENT_COLUMNS = (
    "event_id", "event_ts", "dt", "ingest_dt", "user_id", "session_id", "event_type", "item_id",
    "request_id", "position", "page", "device", "price", "quantity", "market", "item_known",
    "category_l1", "category_l2", "category_l3", "brand", "item_price", "item_created_ts",
    "source_file", "source_line",
)  # fmt: skip

_log = get_logger("silver")


class SilverInputError(InputError, RuntimeError):
    """Silver cannot start: its bronze input is missing."""


@dataclass(frozen=True)
class SilverResult:
    days: list[str]
    rows_in: int
    duplicates: int
    dropped_event_types: int
    events: int
    bot_events: int
    bot_user_days: int
    unknown_item_events: int
    synthesized_impressions: int
    conversions: dict[str, dict[str, int]]


def _context_days(days: list[str], context: int) -> list[str]:
    dates = {dt.date.fromisoformat(d) for d in days}
    wide = {d + dt.timedelta(days=k) for d in dates for k in range(-context, context + 1)}
    return sorted(d.isoformat() for d in wide)


def bronze_days(lake: Lake) -> list[str]:
    """Every event day bronze holds."""
    return sorted({str(p["dt"]) for p in lake.snapshot_partitions(BRONZE_EVENTS) if p.get("dt")})


def deduplicate(events: DataFrame) -> DataFrame:
    """Rank copies of each event_id, first by ts (ties: earliest ingest, file, line)."""
    first = Window.partitionBy("event_id").orderBy("ts", "ingest_dt", "source_file", "source_line")
    return events.withColumn("_copy", F.row_number().over(first))


def flag_bots(events: DataFrame, cfg: BotConfig) -> DataFrame:
    """Add ``bot_reason`` (null for humans): the thresholds a user-day exceeded."""
    user_day = Window.partitionBy("user_id", "dt")
    n_events = F.count(F.lit(1)).over(user_day)
    n_clicks = F.count(F.when(F.col("event_type") == "click", 1)).over(user_day)
    counted = events.withColumn("_n_events", n_events).withColumn("_n_clicks", n_clicks)
    reasons = [
        F.when(
            F.col("_n_events") > cfg.max_events_per_day,
            F.format_string(f"events_per_day=%d>{cfg.max_events_per_day}", F.col("_n_events")),
        ),
        F.when(
            F.col("_n_clicks") > cfg.max_clicks_per_day,
            F.format_string(f"clicks_per_day=%d>{cfg.max_clicks_per_day}", F.col("_n_clicks")),
        ),
    ]
    reason = F.concat_ws(";", *reasons)
    return counted.withColumn("bot_reason", F.when(reason != "", reason)).drop(
        "_n_events", "_n_clicks"
    )


def join_dimensions(events: DataFrame, items: DataFrame, users: DataFrame) -> DataFrame:
    catalog = items.select(
        "item_id",
        F.lit(True).alias("_in_catalog"),
        "category_l1",
        "category_l2",
        "category_l3",
        "brand",
        F.col("price").alias("item_price"),
        F.col("created_ts").alias("item_created_ts"),
    )
    markets = users.select("user_id", F.col("region").alias("market"))
    return (
        events.join(catalog, "item_id", "left")
        .join(markets, "user_id", "left")
        .withColumn("item_known", F.coalesce("_in_catalog", F.lit(False)))
        .drop("_in_catalog")
    )


def _committed_rows(
    spark: SparkSession,
    lake: Lake,
    table: str,
    commit: CommitResult,
    filters: list[PartitionFilter],
) -> int:
    """Rows of this write; a write skipped as already committed is counted in the lake."""
    if not commit.skipped:
        return commit.rows
    return lake.read_table(spark, table, filters=filters).count()


def run_silver(
    spark: SparkSession,
    lake: Lake,
    raw_root: str,
    fcfg: FeatureConfig,
    days: list[str] | None = None,
    run_id: str | None = None,
) -> SilverResult:
    started = time.monotonic()
    if not lake.exists(BRONZE_EVENTS):
        raise SilverInputError(
            f"table {BRONZE_EVENTS} does not exist under {lake.root}: run --stage bronze first"
        )
    run_days = sorted(set(days)) if days else bronze_days(lake)
    if not run_days:
        raise SilverInputError(f"table {BRONZE_EVENTS} holds no event days")
    cfg = fcfg.silver
    mapping = fcfg.raw_mapping
    bronze = lake.read_table(
        spark, BRONZE_EVENTS, filters=[("dt", "in", _context_days(run_days, cfg.context_days))]
    )

    items = load_items(spark, raw_root, mapping, lake.read_table(spark, BRONZE_EVENTS))
    users = load_users(spark, raw_root, mapping)
    item_table = items.table.select(*ITEM_COLUMNS).persist()
    catalog_size = item_table.count()

    in_run = F.col("dt").isin(run_days)
    funnel = F.col("event_type").isin(*EVENT_TYPES)
    ranked = deduplicate(bronze).persist()
    counts = ranked.agg(
        F.count(F.when(in_run, 1)).alias("rows_in"),
        F.count(F.when(in_run & ~funnel, 1)).alias("dropped"),
        F.count(F.when(in_run & funnel & (F.col("_copy") > 1), 1)).alias("duplicates"),
    ).first()
    assert counts is not None

    unique = ranked.where(funnel & (F.col("_copy") == 1)).drop("_copy")
    sessions = sessionize(unique, cfg.session_gap_minutes).where(in_run)
    flagged = join_dimensions(flag_bots(sessions, cfg.bots), item_table, users.table)
    shaped = (
        flagged.withColumnRenamed("ts", "event_ts")
        .select(*SILVER_EVENT_COLUMNS, "bot_reason")
        .persist()
    )
    humans = shaped.where(F.col("bot_reason").isNull()).drop("bot_reason")
    bots = shaped.where(F.col("bot_reason").isNotNull())
    if not mapping.has_impressions:
        humans = synthesize_impressions(humans, item_table, catalog_size, cfg.negative_sampling)

    replace = [{"dt": d} for d in run_days]

    def tagged(table: str) -> str | None:
        return f"{run_id}:{table}" if run_id else None

    lake.write_table(item_table, SILVER_ITEMS, mode="overwrite", run_id=tagged(SILVER_ITEMS))
    lake.write_table(
        users.table.select(*USER_COLUMNS), SILVER_USERS,
        mode="overwrite", run_id=tagged(SILVER_USERS),
    )
    events_commit = lake.write_table(
        humans, SILVER_EVENTS, mode="overwrite", partition_by=["dt"],
        replace_partitions=replace, run_id=tagged(SILVER_EVENTS),
    )  # fmt: skip
    bots_commit = lake.write_table(
        bots, SILVER_BOT_EVENTS, mode="overwrite", partition_by=["dt"],
        replace_partitions=replace, run_id=tagged(SILVER_BOT_EVENTS),
    )  # fmt: skip
    summary = shaped.agg(
        F.count(F.when(F.col("bot_reason").isNotNull(), 1)).alias("bot_events"),
        F.countDistinct(
            F.when(F.col("bot_reason").isNotNull(), F.concat_ws("|", "user_id", "dt"))
        ).alias("bot_user_days"),
        F.count(F.when(F.col("bot_reason").isNull() & ~F.col("item_known"), 1)).alias("unknown"),
        F.count(F.when(F.col("bot_reason").isNull(), 1)).alias("humans"),
    ).first()
    assert summary is not None
    for frame in (ranked, shaped, item_table):
        frame.unpersist()

    day_filter: list[PartitionFilter] = [("dt", "in", run_days)]
    written = _committed_rows(spark, lake, SILVER_EVENTS, events_commit, day_filter)
    # What gold's attribution window will make of the run days' conversions (DESIGN.md 4.3).
    conversions = conversion_attribution(
        lake.read_table(spark, SILVER_EVENTS, filters=day_filter),
        fcfg.gold.attribution_window_hours,
    )
    result = SilverResult(
        days=run_days,
        rows_in=int(counts["rows_in"]),
        duplicates=int(counts["duplicates"]),
        dropped_event_types=int(counts["dropped"]),
        events=written,
        bot_events=_committed_rows(spark, lake, SILVER_BOT_EVENTS, bots_commit, day_filter),
        bot_user_days=int(summary["bot_user_days"]),
        unknown_item_events=int(summary["unknown"]),
        synthesized_impressions=written - int(summary["humans"]),
        conversions=conversions,
    )
    log_stage(
        _log,
        "silver",
        days=len(run_days),
        rows_in=result.rows_in,
        rows_out=result.events,
        duplicates=result.duplicates,
        dropped_event_types=result.dropped_event_types,
        bot_events=result.bot_events,
        bot_user_days=result.bot_user_days,
        unknown_item_events=result.unknown_item_events,
        synthesized_impressions=result.synthesized_impressions,
        conversions=conversions,
        attribution_window_hours=fcfg.gold.attribution_window_hours,
        items=catalog_size,
        items_rejected=items.rejected,
        items_duplicates=items.duplicates,
        users_rejected=users.rejected,
        users_duplicates=users.duplicates,
        seconds=time.monotonic() - started,
    )
    return result
