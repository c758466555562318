"""Bronze: raw lines -> typed ``bronze/events`` + ``bronze/quarantine``, reconciled.

Every line read ends in exactly one of the two tables. A line is classified by
the first failing check in ``QuarantineReason`` order; lines passing all checks
are typed per DESIGN.md 4.1 and written with their source file and line.

Invalid bytes: Spark's text source keeps a line's bytes as they are, so
``is_valid_utf8`` tests them exactly; such lines (and lines with a NUL byte)
are quarantined as invalid_encoding with ``raw_line`` holding the base64 of the
original bytes. Blank lines are quarantined as not_json. Re-running bronze for
some ingest days replaces exactly those days' rows in both tables.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_engineering.config import BronzeConfig, FeatureConfig
from feature_engineering.mapping import (
    PARSE_NOT_OBJECT,
    PARSE_NOT_RECORD,
    PARSE_TRUNCATED,
    parse_fields,
    parse_time,
    text_col,
    type_col,
)
from feature_engineering.raw_input import list_days, read_numbered_lines
from mtlrec.errors import CheckError
from mtlrec.lake import Lake, PartitionFilter
from mtlrec.log import get_logger, log_stage
from mtlrec.raw_contract import REQUIRED_FIELDS, QuarantineReason

EVENTS_TABLE = "bronze/events"
QUARANTINE_TABLE = "bronze/quarantine"

STRING_FIELDS = (
    "event_id", "user_id", "session_id", "event_type", "item_id",
    "request_id", "page", "device", "item_category",
)  # fmt: skip
INT_TYPES = ("BIGINT", "INT", "SMALLINT", "TINYINT")
NUMBER_TYPES = (*INT_TYPES, "DECIMAL", "DOUBLE", "FLOAT")

EVENT_COLUMNS = (
    "event_id", "ts", "user_id", "session_id", "event_type", "item_id", "request_id",
    "position", "page", "device", "price", "quantity", "item_category",
    "source_file", "source_line", "dt", "ingest_dt",
)  # fmt: skip
QUARANTINE_COLUMNS = ("raw_line", "source_file", "source_line", "reason", "detail", "ingest_dt")

_log = get_logger("bronze")


class ReconciliationError(CheckError, RuntimeError):
    """Lines read != rows in bronze/events + bronze/quarantine for the run's days."""


@dataclass(frozen=True)
class BronzeResult:
    days: list[str]
    lines_read: int
    events: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)


def run_window(days: list[str], cfg: BronzeConfig) -> tuple[dt.date, dt.date]:
    """[first, end) of accepted event days: the configured or input days ± tolerance."""
    first = cfg.window_start or dt.date.fromisoformat(min(days))
    last = cfg.window_end or dt.date.fromisoformat(max(days))
    pad = dt.timedelta(days=cfg.window_tolerance_days)
    return first - pad, last + dt.timedelta(days=1) + pad


# ---------------------------------------------------------------------- typing
def _text(f: str) -> Column:
    return F.col(text_col(f))


def _type(f: str) -> Column:
    return F.col(type_col(f))


def _present(f: str) -> Column:
    """Given and not null; an empty or blank string counts as absent. Never null."""
    blank = (_type(f) == "STRING") & (F.trim(_text(f)) == "")
    return F.coalesce(_type(f).isNotNull() & (_type(f) != "VOID") & ~blank, F.lit(False))


def _non_finite(f: str) -> Column:
    number = _text(f).try_cast("double")
    return _present(f) & F.coalesce(F.isnan(number) | (F.abs(number) == float("inf")), F.lit(False))


def _as_int(f: str, numbers_as_text: bool) -> tuple[Column, Column]:
    """(value, badly typed) for an integer field; a non-finite value is an invalid number."""
    number_type = _type(f).isin(*INT_TYPES, "DECIMAL")
    if numbers_as_text:
        number_type = number_type | (_type(f) == "STRING")
    value = F.when(number_type, _text(f).try_cast("int"))
    return value, _present(f) & ~_non_finite(f) & value.isNull()


def _as_double(f: str, numbers_as_text: bool) -> tuple[Column, Column]:
    """(value, badly typed) for a float field; a non-finite string is an invalid number."""
    number_type = _type(f).isin(*NUMBER_TYPES) | _non_finite(f)
    if numbers_as_text:
        number_type = number_type | (_type(f) == "STRING")
    value = F.when(number_type, _text(f).try_cast("double"))
    return value, _present(f) & value.isNull()


def _failing(checks: list[tuple[str, Column]], describe: bool = False) -> Column:
    """Comma-joined names (``name=TYPE`` when ``describe``) of the failing checks."""
    return F.concat_ws(
        ",",
        *[
            F.when(bad, F.concat(F.lit(f"{name}="), _type(name)) if describe else F.lit(name))
            for name, bad in checks
        ],
    )


def _first_failure(checks: list[tuple[QuarantineReason, str, str]]) -> tuple[Column, Column]:
    """(reason, detail) of the first check whose flag column is true, in the given order."""
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for code, flag, why in reversed(checks):
        reason = F.when(F.col(flag), F.lit(code.value)).otherwise(reason)
        detail = F.when(F.col(flag), F.col(why)).otherwise(detail)
    return reason, detail


def classify(lines: DataFrame, fcfg: FeatureConfig, window: tuple[dt.date, dt.date]) -> DataFrame:
    """Typed event columns, ``raw_line``, and ``reason`` (null for a good line) + ``detail``.

    Built in three projections (parse, typed values + one flag per check,
    first failure) so each expensive expression is evaluated once per line.
    """
    mapping, cfg = fcfg.raw_mapping, fcfg.bronze
    as_text = mapping.format == "csv"
    parsed = parse_fields(lines, mapping)

    position, position_bad = _as_int("position", as_text)
    quantity, quantity_bad = _as_int("quantity", as_text)
    price, price_bad = _as_double("price", as_text)
    ts_bad = _present("ts") & ~_type("ts").isin("STRING", *NUMBER_TYPES)
    type_checks = [(f, _present(f) & (_type(f) != "STRING")) for f in STRING_FIELDS]
    type_checks += [("ts", ts_bad), ("position", position_bad), ("quantity", quantity_bad)]
    type_checks += [("price", price_bad)]
    missing = [(f, ~_present(f)) for f in REQUIRED_FIELDS]
    event_types = F.create_map(*[F.lit(x) for kv in mapping.event_types.items() for x in kv])
    size = F.octet_length("value")
    price_non_finite = _non_finite("price")
    quantity_non_finite = _non_finite("quantity")
    typed = parsed.select(
        *lines.columns,
        *[F.when(_present(f), _text(f)).alias(f) for f in STRING_FIELDS if f != "event_type"],
        parse_time(_text("ts"), mapping.ts_epoch_unit).alias("ts"),
        _text("ts").alias("_ts_text"),
        position.alias("position"),
        quantity.alias("quantity"),
        price.alias("price"),
        F.element_at(event_types, _text("event_type")).alias("event_type"),
        _text("event_type").alias("_event_type_text"),
        _text("price").alias("_price_text"),
        _text("quantity").alias("_quantity_text"),
        (~F.is_valid_utf8("value") | (F.instr("value", "\u0000") > 0)).alias("_bad_encoding"),
        size.alias("_size"),
        "_parse",
        "_parse_detail",
        F.greatest(*[bad.cast("int") for _, bad in missing]).alias("_missing"),
        _failing(missing).alias("_missing_detail"),
        F.greatest(*[bad.cast("int") for _, bad in type_checks]).alias("_wrong_type"),
        _failing(type_checks, describe=True).alias("_wrong_type_detail"),
        price_non_finite.alias("_price_non_finite"),
        quantity_non_finite.alias("_quantity_non_finite"),
    )
    start = dt.datetime.combine(window[0], dt.time())
    end = dt.datetime.combine(window[1], dt.time())
    flagged = typed.select(
        "*",
        (F.col("_size") > cfg.max_line_bytes).alias("_too_long"),
        F.format_string(f"%d bytes > max_line_bytes {cfg.max_line_bytes}", F.col("_size")).alias(
            "_too_long_detail"
        ),
        F.lit("not valid UTF-8 or has a NUL byte; raw_line is the base64 of the bytes").alias(
            "_encoding_detail"
        ),
        F.col("cut_detail").isNotNull().alias("_cut_short"),
        (F.col("_parse") == PARSE_TRUNCATED).alias("_truncated"),
        (F.col("_parse") == PARSE_NOT_RECORD).alias("_not_record"),
        (F.col("_parse") == PARSE_NOT_OBJECT).alias("_not_object"),
        (F.col("_missing") == 1).alias("_is_missing"),
        F.concat(F.lit("missing: "), F.col("_missing_detail")).alias("_missing_why"),
        (F.col("_wrong_type") == 1).alias("_is_wrong_type"),
        F.concat(F.lit("wrong type: "), F.col("_wrong_type_detail")).alias("_wrong_type_why"),
        F.col("ts").isNull().alias("_bad_ts"),
        F.concat(F.lit("ts="), F.col("_ts_text")).alias("_bad_ts_why"),
        ((F.col("ts") < F.lit(start)) | (F.col("ts") >= F.lit(end))).alias("_out_of_window"),
        F.concat(
            F.lit("ts="),
            F.date_format("ts", "yyyy-MM-dd'T'HH:mm:ss'Z'"),
            F.lit(f" outside [{window[0]}, {window[1]})"),
        ).alias("_out_of_window_why"),
        F.col("event_type").isNull().alias("_unknown_type"),
        F.concat(F.lit("event_type="), F.col("_event_type_text")).alias("_unknown_type_why"),
        ((F.col("price") < 0) & ~F.col("_price_non_finite")).alias("_negative_price"),
        F.concat(F.lit("price="), F.col("_price_text")).alias("_price_why"),
        (F.col("_price_non_finite") | F.col("_quantity_non_finite")).alias("_invalid_number"),
        F.concat_ws(
            ",",
            F.when(F.col("_price_non_finite"), F.concat(F.lit("price="), F.col("_price_text"))),
            F.when(
                F.col("_quantity_non_finite"), F.concat(F.lit("quantity="), F.col("_quantity_text"))
            ),
        ).alias("_invalid_number_why"),
    )
    reason, detail = _first_failure(
        [
            # The tail of a cut gzip stream is a truncated record whatever its bytes look like.
            (QuarantineReason.TRUNCATED_JSON, "_cut_short", "cut_detail"),
            (QuarantineReason.INVALID_ENCODING, "_bad_encoding", "_encoding_detail"),
            (QuarantineReason.LINE_TOO_LONG, "_too_long", "_too_long_detail"),
            (QuarantineReason.TRUNCATED_JSON, "_truncated", "_parse_detail"),
            (QuarantineReason.NOT_JSON, "_not_record", "_parse_detail"),
            (QuarantineReason.NOT_AN_OBJECT, "_not_object", "_parse_detail"),
            (QuarantineReason.MISSING_FIELD, "_is_missing", "_missing_why"),
            (QuarantineReason.WRONG_TYPE, "_is_wrong_type", "_wrong_type_why"),
            (QuarantineReason.BAD_TIMESTAMP, "_bad_ts", "_bad_ts_why"),
            (QuarantineReason.TIMESTAMP_OUT_OF_WINDOW, "_out_of_window", "_out_of_window_why"),
            (QuarantineReason.UNKNOWN_EVENT_TYPE, "_unknown_type", "_unknown_type_why"),
            (QuarantineReason.NEGATIVE_PRICE, "_negative_price", "_price_why"),
            (QuarantineReason.INVALID_NUMBER, "_invalid_number", "_invalid_number_why"),
        ]
    )
    return flagged.select(
        *[c for c in EVENT_COLUMNS if c != "dt"],
        F.date_format("ts", "yyyy-MM-dd").alias("dt"),
        F.when(F.col("_bad_encoding"), F.base64("value"))
        .otherwise(F.col("value"))
        .alias("raw_line"),
        reason.alias("reason"),
        detail.alias("detail"),
    )


def _day_range(first: dt.date, end: dt.date) -> list[str]:
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((end - first).days)]


def _events_partitions(
    lake: Lake, days: list[str], window: tuple[dt.date, dt.date]
) -> list[dict[str, str]]:
    """Every (dt, ingest_dt) the run may write or previously wrote for its ingest days."""
    wanted = {(d, ingest) for d in _day_range(*window) for ingest in days}
    if lake.exists(EVENTS_TABLE):
        for part in lake.snapshot_partitions(EVENTS_TABLE):
            if part.get("ingest_dt") in days and part.get("dt") is not None:
                wanted.add((str(part["dt"]), str(part["ingest_dt"])))
    return [{"dt": d, "ingest_dt": i} for d, i in sorted(wanted)]


def run_bronze(
    spark: SparkSession,
    lake: Lake,
    raw_root: str,
    fcfg: FeatureConfig,
    days: list[str] | None = None,
    run_id: str | None = None,
) -> BronzeResult:
    """Ingest the raw day directories (all, or ``days``); raise if reconciliation fails."""
    started = time.monotonic()
    mapping = fcfg.raw_mapping
    raw_days = list_days(
        spark, f"{raw_root.rstrip('/')}/{mapping.events_dir}", mapping.file_glob, days
    )
    run_days = [d.day for d in raw_days]
    files = [f for d in raw_days for f in d.files]
    window = run_window(run_days, fcfg.bronze)
    _log.info(
        "bronze: %d files, ingest days %s..%s, event window [%s, %s)",
        len(files),
        run_days[0],
        run_days[-1],
        window[0],
        window[1],
    )

    numbered = read_numbered_lines(spark, files)
    classified = classify(numbered.lines, fcfg, window).persist()
    try:
        # One pass fills the cache and counts lines per outcome (null reason: a good line).
        outcomes = classified.groupBy("reason").count().collect()
        numbered.release()
        lines_read = sum(int(row["count"]) for row in outcomes)
        by_reason = {str(r["reason"]): int(r["count"]) for r in outcomes if r["reason"]}
        events = classified.where(F.col("reason").isNull()).select(*EVENT_COLUMNS)
        quarantine = classified.where(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS)
        lake.write_table(
            events,
            EVENTS_TABLE,
            mode="overwrite",
            partition_by=["dt", "ingest_dt"],
            replace_partitions=_events_partitions(lake, run_days, window),
            run_id=f"{run_id}:{EVENTS_TABLE}" if run_id else None,
        )
        lake.write_table(
            quarantine,
            QUARANTINE_TABLE,
            mode="overwrite",
            partition_by=["ingest_dt"],
            replace_partitions=[{"ingest_dt": d} for d in run_days],
            run_id=f"{run_id}:{QUARANTINE_TABLE}" if run_id else None,
        )
    finally:
        classified.unpersist()
        numbered.release()

    # Reconcile against what the lake now holds for these ingest days, not the in-memory frame.
    day_filter: list[PartitionFilter] = [("ingest_dt", "in", run_days)]
    written = lake.read_table(spark, EVENTS_TABLE, filters=day_filter).count()
    quarantined = lake.read_table(spark, QUARANTINE_TABLE, filters=day_filter).count()
    balance = f"lines_read={lines_read} events={written} quarantined={quarantined}"
    if lines_read != written + quarantined:
        raise ReconciliationError(
            f"bronze reconciliation FAILED for ingest days {run_days}: {balance} "
            f"(difference {lines_read - written - quarantined})"
        )
    _log.info("bronze reconciliation OK: %s (lines_read = events + quarantined)", balance)
    log_stage(
        _log,
        "bronze",
        days=len(run_days),
        files=len(files),
        rows_in=lines_read,
        rows_out=written,
        quarantined=quarantined,
        by_reason=by_reason,
        seconds=time.monotonic() - started,
    )
    return BronzeResult(run_days, lines_read, written, quarantined, by_reason)
