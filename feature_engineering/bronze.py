"""Bronze: raw files -> typed ``bronze/events`` + ``bronze/quarantine``, reconciled.

Bronze lists the raw events directory itself (``raw_input.list_raw``): every entry is
read, or recorded in ``bronze/skipped_files`` with a reason. Every line of a read file
ends in exactly one of the two line tables, and each file balances on its own: lines
in the file = its events + its quarantined lines. A line is classified by the first
failing check (the order in ``classify``); lines passing all checks are typed per
DESIGN.md 4.1 and written with their source file and line.

Invalid bytes: the reader keeps a line's bytes as they are, so ``is_valid_utf8`` tests
them exactly; such lines (and lines with a NUL byte, or a JSON escape of a lone
surrogate) are quarantined as invalid_encoding, and ``raw_line`` holds the base64 of
bytes that are not valid text. Blank lines are quarantined as not_json (CSV:
wrong_field_count). Re-running bronze for some ingest days replaces exactly those
days' rows in all three tables.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_engineering.config import BronzeConfig, FeatureConfig, RawMappingConfig
from feature_engineering.mapping import (
    PARSE_FIELD_COUNT,
    PARSE_NOT_OBJECT,
    PARSE_NOT_RECORD,
    PARSE_TRUNCATED,
    parse_fields,
    parse_time,
    text_col,
    type_col,
)
from feature_engineering.raw_input import (
    ISSUE_CUT,
    ISSUE_NOT_GZIP,
    SkippedEntry,
    list_raw,
    plan_reads,
    read_pieces,
)
from mtlrec.errors import CheckError
from mtlrec.lake import Lake, PartitionFilter
from mtlrec.log import get_logger, log_stage
from mtlrec.raw_contract import REQUIRED_FIELDS, FormatReason, QuarantineReason
from mtlrec.tables import BRONZE_EVENTS, BRONZE_QUARANTINE, BRONZE_SKIPPED_FILES

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
SKIPPED_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("kind", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("ingest_dt", pa.string()),
    ]
)
# An escape of a high surrogate not followed by a low one, or a low one without a high one
# before it; the backslash before \u must not itself be escaped (an even run before it).
_LONE_SURROGATE = (
    r"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\)(?:\\\\)*(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)

_log = get_logger("bronze")


class ReconciliationError(CheckError, RuntimeError):
    """A file's lines != its rows in bronze/events + bronze/quarantine."""


@dataclass(frozen=True)
class BronzeResult:
    days: list[str]
    lines_read: int
    events: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)
    files: int = 0
    skipped_files: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)


def run_window(days: list[str], cfg: BronzeConfig) -> tuple[dt.date, dt.date] | None:
    """[first, end) of accepted event days, or None when any day is accepted.

    The configured window or (``window: ingest_days``) the run's ingest days, widened by
    the tolerance; ``window: from_data`` without a configured window accepts any day.
    """
    if cfg.window_start is None and cfg.window == "from_data":
        return None
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


def _first_failure(checks: list[tuple[StrEnum, str, str]]) -> tuple[Column, Column]:
    """(reason, detail) of the first check whose flag column is true, in the given order."""
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for code, flag, why in reversed(checks):
        reason = F.when(F.col(flag), F.lit(code.value)).otherwise(reason)
        detail = F.when(F.col(flag), F.col(why)).otherwise(detail)
    return reason, detail


def _out_of_window(window: tuple[dt.date, dt.date] | None) -> tuple[Column, Column]:
    """(flag, detail) of a timestamp outside the window; never set without a window."""
    if window is None:
        return F.lit(False), F.lit(None).cast("string")
    start = dt.datetime.combine(window[0], dt.time())
    end = dt.datetime.combine(window[1], dt.time())
    detail = F.concat(
        F.lit("ts="),
        F.date_format("ts", "yyyy-MM-dd'T'HH:mm:ss'Z'"),
        F.lit(f" outside [{window[0]}, {window[1]}) (features.bronze.window)"),
    )
    return (F.col("ts") < F.lit(start)) | (F.col("ts") >= F.lit(end)), detail


def _header_detail(mapping: RawMappingConfig) -> Column:
    """Why line 1 of a CSV file with a header is quarantined; says so if the names differ."""
    expected = mapping.csv_delimiter.join(mapping.csv_columns)
    body = F.regexp_replace(F.col("value"), "\r$", "")
    return F.when(
        body == expected, F.lit("header line (features.raw_mapping.csv_header)")
    ).otherwise(F.lit(f"header line differs from features.raw_mapping.csv_columns {expected!r}"))


def classify(
    lines: DataFrame, fcfg: FeatureConfig, window: tuple[dt.date, dt.date] | None
) -> DataFrame:
    """Typed event columns, ``raw_line``, and ``reason`` (null for a good line) + ``detail``.

    Built in three projections (parse, typed values + one flag per check,
    first failure) so each expensive expression is evaluated once per line.
    """
    mapping, cfg = fcfg.raw_mapping, fcfg.bronze
    as_text = mapping.format == "csv"
    # A JSON \uD800-\uDFFF escape without its pair would be decoded to "?" by the parser,
    # so two different raw ids could merge: such lines are quarantined, never replaced.
    # The regex runs only on lines holding a backslash-u; the substring test costs far less.
    escapes = F.instr(F.col("value").cast("string"), "\\u") > 0
    lone_surrogate = F.lit(False) if as_text else escapes & F.col("value").rlike(_LONE_SURROGATE)
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
    size = F.col("line_bytes")
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
        (~F.is_valid_utf8("value") | (F.instr("value", "\u0000") > 0)).alias("_bad_bytes"),
        lone_surrogate.alias("_lone_surrogate"),
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
    out_of_window, out_of_window_why = _out_of_window(window)
    flagged = typed.select(
        "*",
        (F.col("read_issue") == ISSUE_NOT_GZIP).alias("_not_gzip"),
        (F.col("read_issue") == ISSUE_CUT).alias("_cut_short"),
        ((F.col("source_line") == 1) & F.lit(mapping.csv_header)).alias("_header"),
        _header_detail(mapping).alias("_header_detail"),
        (F.col("_size") > cfg.max_line_bytes).alias("_too_long"),
        F.format_string(
            f"%d bytes > features.bronze.max_line_bytes {cfg.max_line_bytes}; raw_line holds "
            f"the first {cfg.max_line_bytes} bytes",
            F.col("_size"),
        ).alias("_too_long_detail"),
        F.col("_bad_bytes").alias("_bad_encoding"),
        F.lit("not valid UTF-8 or has a NUL byte; raw_line is the base64 of the bytes").alias(
            "_encoding_detail"
        ),
        F.lit("a \\uD800-\\uDFFF escape without its pair (lone surrogate)").alias(
            "_surrogate_detail"
        ),
        (F.col("_parse") == PARSE_FIELD_COUNT).alias("_field_count"),
        (F.col("_parse") == PARSE_TRUNCATED).alias("_truncated"),
        (F.col("_parse") == PARSE_NOT_RECORD).alias("_not_record"),
        (F.col("_parse") == PARSE_NOT_OBJECT).alias("_not_object"),
        (F.col("_missing") == 1).alias("_is_missing"),
        F.concat(F.lit("missing: "), F.col("_missing_detail")).alias("_missing_why"),
        (F.col("_wrong_type") == 1).alias("_is_wrong_type"),
        F.concat(F.lit("wrong type: "), F.col("_wrong_type_detail")).alias("_wrong_type_why"),
        F.col("ts").isNull().alias("_bad_ts"),
        F.concat(F.lit("ts="), F.col("_ts_text")).alias("_bad_ts_why"),
        out_of_window.alias("_out_of_window"),
        out_of_window_why.alias("_out_of_window_why"),
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
    truncated = FormatReason.TRUNCATED_RECORD if as_text else QuarantineReason.TRUNCATED_JSON
    reason, detail = _first_failure(
        [
            # What the file decided comes first: a .gz that is not gzip, a cut stream's tail
            # (a truncated record whatever its bytes look like), a header line.
            (FormatReason.NOT_GZIP, "_not_gzip", "read_detail"),
            (truncated, "_cut_short", "read_detail"),
            (FormatReason.CSV_HEADER, "_header", "_header_detail"),
            # Only the first max_line_bytes bytes of a long line were read: judge its length.
            (QuarantineReason.LINE_TOO_LONG, "_too_long", "_too_long_detail"),
            (QuarantineReason.INVALID_ENCODING, "_bad_encoding", "_encoding_detail"),
            (QuarantineReason.INVALID_ENCODING, "_lone_surrogate", "_surrogate_detail"),
            (FormatReason.WRONG_FIELD_COUNT, "_field_count", "_parse_detail"),
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
        # Bytes that are not valid text are kept as base64, whatever the reason.
        F.when(F.col("_bad_bytes"), F.base64("value")).otherwise(F.col("value")).alias("raw_line"),
        reason.alias("reason"),
        detail.alias("detail"),
    )


_SETTING_FOR = {
    QuarantineReason.TIMESTAMP_OUT_OF_WINDOW: "features.bronze.window (from_data for a dump "
    "whose days are its content) or window_start/window_end",
    QuarantineReason.LINE_TOO_LONG: "features.bronze.max_line_bytes",
    QuarantineReason.BAD_TIMESTAMP: "features.raw_mapping.fields.ts and ts_epoch_unit",
    QuarantineReason.UNKNOWN_EVENT_TYPE: "features.raw_mapping.event_types",
    QuarantineReason.MISSING_FIELD: "features.raw_mapping.fields",
    QuarantineReason.WRONG_TYPE: "features.raw_mapping.fields",
    QuarantineReason.NOT_JSON: "features.raw_mapping.format",
    QuarantineReason.TRUNCATED_JSON: "features.raw_mapping.format",
    QuarantineReason.INVALID_ENCODING: "the files' encoding (UTF-8 is required)",
    FormatReason.WRONG_FIELD_COUNT: "features.raw_mapping.csv_columns and csv_delimiter",
    FormatReason.NOT_GZIP: "the files' names (.gz must be gzip)",
}


class QuarantineShareError(CheckError, RuntimeError):
    """More of the run's lines were quarantined than ``bronze.max_quarantined_share``."""


def check_quarantined_share(result: BronzeResult, cfg: BronzeConfig) -> None:
    """Raise when the quarantined share is above the limit, naming the dominant reason."""
    if (
        result.lines_read == 0
        or result.quarantined <= cfg.max_quarantined_share * result.lines_read
    ):
        return
    reason, count = max(result.by_reason.items(), key=lambda kv: (kv[1], kv[0]))
    setting = _SETTING_FOR.get(reason, "the quarantine's detail column")  # type: ignore[call-overload]
    raise QuarantineShareError(
        f"bronze quarantined {result.quarantined} of {result.lines_read} lines "
        f"({result.quarantined / result.lines_read:.1%}), above "
        f"features.bronze.max_quarantined_share={cfg.max_quarantined_share}; most are "
        f"{reason} ({count}): look at {setting}. Everything was written "
        f"(bronze/quarantine holds the lines)"
    )


def _skipped_table(skipped: list[SkippedEntry]) -> pa.Table:
    return pa.table(
        {
            "path": [s.path for s in skipped],
            "kind": [s.kind for s in skipped],
            "reason": [s.reason.value for s in skipped],
            "detail": [s.detail for s in skipped],
            "ingest_dt": [s.ingest_dt for s in skipped],
        },
        schema=SKIPPED_SCHEMA,
    )


def _per_file(frame: DataFrame, *keys: str) -> dict[tuple[str, ...], int]:
    rows = frame.groupBy(*keys).count().collect()
    return {tuple(str(r[k]) for k in keys): int(r["count"]) for r in rows}


def reconcile_files(
    spark: SparkSession, lake: Lake, run_days: list[str], lines_per_file: dict[str, int]
) -> tuple[int, int, dict[str, int]]:
    """Check every read file against what the lake now holds for the run's ingest days:
    lines in the file = its rows in bronze/events + its rows in bronze/quarantine.

    Returns (events, quarantined, quarantined by reason); raises ``ReconciliationError``
    naming the first files that do not balance.
    """
    day_filter: list[PartitionFilter] = [("ingest_dt", "in", run_days)]
    events = _per_file(lake.read_table(spark, BRONZE_EVENTS, filters=day_filter), "source_file")
    quarantine = _per_file(
        lake.read_table(spark, BRONZE_QUARANTINE, filters=day_filter), "source_file", "reason"
    )
    held: dict[str, int] = {path: n for (path,), n in events.items()}
    by_reason: dict[str, int] = {}
    for (path, reason), n in quarantine.items():
        held[path] = held.get(path, 0) + n
        by_reason[reason] = by_reason.get(reason, 0) + n
    wrong = [
        f"{path}: lines={lines_per_file.get(path, 0)} in tables={held.get(path, 0)}"
        for path in sorted(set(lines_per_file) | set(held))
        if lines_per_file.get(path, 0) != held.get(path, 0)
    ]
    written = sum(events.values())
    quarantined = sum(quarantine.values())
    lines_read = sum(lines_per_file.values())
    balance = f"lines_read={lines_read} events={written} quarantined={quarantined}"
    if wrong or lines_read != written + quarantined:
        raise ReconciliationError(
            f"bronze reconciliation FAILED for ingest days {run_days}: {balance}; "
            f"{len(wrong)} file(s) do not balance: {wrong[:3]}"
        )
    _log.info(
        "bronze reconciliation OK: %s (lines_read = events + quarantined, for each of %d files)",
        balance,
        len(lines_per_file),
    )
    return written, quarantined, by_reason


def run_bronze(
    spark: SparkSession,
    lake: Lake,
    raw_root: str,
    fcfg: FeatureConfig,
    days: list[str] | None = None,
    run_id: str | None = None,
) -> BronzeResult:
    """Ingest the raw day directories (all, or ``days``).

    Raises ``ReconciliationError`` if a file's lines do not balance, and
    ``QuarantineShareError`` (after writing everything) when too much was quarantined.
    """
    started = time.monotonic()
    mapping, cfg = fcfg.raw_mapping, fcfg.bronze
    listing = list_raw(raw_root, mapping.events_dir, mapping.file_glob, days)
    run_days = listing.days
    window = run_window(run_days, cfg)
    _log.info(
        "bronze: %d files (%d entries skipped), ingest days %s..%s, event window %s",
        len(listing.files),
        len(listing.skipped),
        run_days[0],
        run_days[-1],
        f"[{window[0]}, {window[1]})" if window else "from the data (any day)",
    )

    def tagged(table: str) -> str | None:
        return f"{run_id}:{table}" if run_id else None

    # Entries directly under events_dir (ingest_dt null) are listed again by every run.
    replace = [{"ingest_dt": d} for d in run_days]
    lake.write_arrow(
        _skipped_table(listing.skipped),
        BRONZE_SKIPPED_FILES,
        mode="overwrite",
        partition_by=["ingest_dt"],
        replace_partitions=[*replace, {"ingest_dt": None}],
        run_id=tagged(BRONZE_SKIPPED_FILES),
    )
    # Each file's lines are counted first (newlines, no parsing), so the reconciliation's
    # left side comes from the files themselves, not from what the writes kept.
    plan = plan_reads(spark, listing.files, cfg.max_line_bytes)
    lines_per_file = plan.lines_per_file
    # Every line is read and classified once (most of bronze's time: a JSON parse and
    # every check), into a staged copy on the lake's storage that both writes read; a
    # cache would hold it in the heap, where bronze on 2 KiB lines died in a 128m and a
    # 256m heap (tests/test_bronze.py, small-heap test). Only quarantined lines keep
    # their raw text in the copy.
    classified = classify(read_pieces(spark, plan.pieces, cfg.max_line_bytes), fcfg, window)
    is_quarantined = F.col("reason").isNotNull()
    staging = classified.select(
        *EVENT_COLUMNS,
        F.when(is_quarantined, F.col("raw_line")).alias("raw_line"),
        "reason",
        "detail",
        is_quarantined.alias("quarantined"),
    )
    with lake.staged(staging, BRONZE_EVENTS, partition_cols=["quarantined"]) as lines:
        lake.write_table(
            lines.where(~F.col("quarantined")).select(*EVENT_COLUMNS),
            BRONZE_EVENTS,
            mode="overwrite",
            partition_by=["dt", "ingest_dt"],
            replace_partitions=replace,  # every event day of these ingest days
            run_id=tagged(BRONZE_EVENTS),
        )
        lake.write_table(
            lines.where(F.col("quarantined")).select(*QUARANTINE_COLUMNS),
            BRONZE_QUARANTINE,
            mode="overwrite",
            partition_by=["ingest_dt"],
            replace_partitions=replace,
            run_id=tagged(BRONZE_QUARANTINE),
        )

    written, quarantined, by_reason = reconcile_files(spark, lake, run_days, lines_per_file)
    skipped_by_reason = dict(Counter(s.reason.value for s in listing.skipped))
    result = BronzeResult(
        run_days,
        sum(lines_per_file.values()),
        written,
        quarantined,
        by_reason,
        files=len(listing.files),
        skipped_files=len(listing.skipped),
        skipped_by_reason=skipped_by_reason,
    )
    log_stage(
        _log,
        "bronze",
        days=len(run_days),
        files=result.files,
        skipped_files=result.skipped_files,
        skipped_by_reason=skipped_by_reason,
        rows_in=result.lines_read,
        rows_out=written,
        quarantined=quarantined,
        quarantined_share=quarantined / max(1, result.lines_read),
        by_reason=by_reason,
        seconds=time.monotonic() - started,
    )
    check_quarantined_share(result, cfg)
    return result
