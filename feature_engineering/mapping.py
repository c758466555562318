"""Map one raw line onto the canonical event fields, driven by ``RawMappingConfig``.

Whatever the source format, the result is the same set of columns: a parse
status, and for every canonical field its text and its JSON type
(``STRING``, ``BIGINT``, ``DECIMAL``, ``DOUBLE``, ``BOOLEAN``, ``OBJECT``,
``ARRAY``, ``VOID`` for JSON null; NULL when absent). Bronze types and checks
these columns without knowing which format they came from.

JSON is parsed once with Spark built-ins: ``try_parse_json`` of ``[<line>]``
decides whether the line is exactly one strict JSON value (rejecting trailing
text or two objects on one line), and each field's value and type are read from
that VARIANT. Only a line with a ``NaN``/``Infinity`` token (Python's
``json.dumps`` writes them) is parsed a second time, by ``from_json``, which
accepts them, so non-finite numbers reach the invalid_number check instead of
failing the parse. CSV lines are split on the delimiter (no quoting); every CSV value is
text, so numbers are checked by casting, and a line with any other number of fields
than ``csv_columns`` (a blank line included) has the status ``field_count``.
"""

from __future__ import annotations

import re

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType, VariantType

from feature_engineering.config import RawMappingConfig

CANONICAL_FIELDS = (
    "event_id",
    "ts",
    "user_id",
    "session_id",
    "event_type",
    "item_id",
    "request_id",
    "position",
    "page",
    "device",
    "price",
    "quantity",
    "item_category",
)

# Non-finite number tokens after ':' ',' or '[' become null for the strictness check only.
_NONFINITE_TOKEN = r"([:,\[]\s*)[-+]?(NaN|Infinity|INF)\b"
# A line can hold such a token only if it holds one of these (tested before any regex runs).
_NONFINITE_WORDS = ("NaN", "Inf", "INF")
# What JSON counts as whitespace before a value.
_JSON_SPACE = " \t\r\n"

PARSE_OK = "ok"
PARSE_TRUNCATED = "truncated"  # starts like a record of the format but does not parse
PARSE_NOT_RECORD = "not_record"  # not a record of the format at all (blank lines included)
PARSE_NOT_OBJECT = "not_object"  # valid JSON that is not an object
PARSE_FIELD_COUNT = "field_count"  # CSV: not exactly the mapping's number of fields


# Longest epoch that still fits a Spark timestamp (microseconds in a long), per unit.
_EPOCH_DIGITS = {"ms": 15, "s": 12}


def parse_time(text: Column, epoch_unit: str) -> Column:
    """An integer (digits only) is epoch in ``epoch_unit``; anything else is tried as ISO-8601.

    Null when neither parses.
    """
    trimmed = F.trim(text)
    digits = _EPOCH_DIGITS[epoch_unit]
    epoch = F.when(trimmed.rlike(rf"^-?[0-9]{{1,{digits}}}$"), trimmed.cast("long"))
    from_epoch = F.timestamp_millis(epoch) if epoch_unit == "ms" else F.timestamp_seconds(epoch)
    return F.when(epoch.isNotNull(), from_epoch).otherwise(F.try_to_timestamp(trimmed))


def text_col(field: str) -> str:
    return f"_{field}_text"


def type_col(field: str) -> str:
    return f"_{field}_type"


def _body(value: Column) -> Column:
    """The line without a trailing CR (CRLF files) and with invalid bytes made safe."""
    text = F.make_valid_utf8(value)
    # The regex runs only on lines that hold a CR: a substring test costs far less.
    return F.when(text.contains("\r"), F.regexp_replace(text, "\r$", "")).otherwise(text)


def _type_name(variant: Column) -> Column:
    """The JSON type's name alone: DECIMAL of ``DECIMAL(2,1)``, OBJECT of ``OBJECT<...>``."""
    return F.substring_index(F.substring_index(F.schema_of_variant(variant), "(", 1), "<", 1)


def _variant_struct(names: list[str]) -> str:
    """The DDL type of a struct of VARIANT fields named ``names``, each name quoted."""
    quoted = ["`" + name.replace("`", "``") + "`" for name in names]
    return "struct<" + ",".join(f"{q}: variant" for q in quoted) + ">"


def _content_id(body: Column) -> Column:
    """A derived event_id: identical lines get identical ids, so silver dedups them."""
    return F.concat(F.lit("h"), F.substring(F.sha2(body.cast("binary"), 256), 1, 32))


def parse_fields(lines: DataFrame, mapping: RawMappingConfig) -> DataFrame:
    """Add ``_parse``, ``_parse_detail`` and per-field text/type columns to ``lines``."""
    if mapping.format == "csv":
        return _parse_csv(lines, mapping)
    return _parse_jsonl(lines, mapping)


def _sources(mapping: RawMappingConfig) -> dict[str, str | None]:
    return {f: getattr(mapping.fields, f) for f in CANONICAL_FIELDS}


def _parse_jsonl(lines: DataFrame, mapping: RawMappingConfig) -> DataFrame:
    body = _body(F.col("value"))
    sources = _sources(mapping)
    named = sorted({s for s in sources.values() if s is not None})
    nonfinite = F.lit(False)
    for word in _NONFINITE_WORDS:
        nonfinite = nonfinite | F.col("_body").contains(word)
    # Wrapped in [ ] the line must be an array of exactly one value: this rejects what a
    # lenient parser would skip, such as trailing text or a second object on the line.
    strict_text = F.when(
        F.col("_nonfinite"), F.regexp_replace("_body", _NONFINITE_TOKEN, "$1null")
    ).otherwise(F.col("_body"))
    strict = F.try_parse_json(F.concat(F.lit("["), strict_text, F.lit("]")))
    # The mapped keys as one struct of VARIANTs: a cast that walks the object once, where
    # a path per key searches it once per key. from_json gives the same struct from the
    # text, reading NaN/Infinity where the strict parse saw null; only lines holding such
    # a token pay for that second parse.
    schema = StructType([StructField(name, VariantType()) for name in named])
    record = F.when(
        F.col("_nonfinite"),
        F.from_json("_body", schema, {"mode": "PERMISSIVE", "allowSingleQuotes": "false"}),
    ).otherwise(F.try_variant_get("_strict", "$[0]", _variant_struct(named)))
    frame = (
        lines.withColumn("_body", body)
        .withColumn("_nonfinite", nonfinite)
        .withColumn("_strict", strict)
        .withColumn("_rec", record)
    )
    starts_object = F.ltrim(F.col("_body")).startswith("{")  # after spaces
    # After any JSON whitespace (tabs and line breaks too); evaluated only for the few
    # lines that do not start with "{" after spaces.
    after_space = F.ltrim(F.translate(F.col("_body"), _JSON_SPACE, " " * len(_JSON_SPACE)))
    # At most one value: no second element. None at all: the line is JSON whitespace.
    is_json = (
        F.col("_strict").isNotNull()
        & F.try_variant_get("_strict", "$[1]", "variant").isNull()
        & (starts_object | (after_space != ""))
    )
    # A single JSON value is an object exactly when its first character is "{".
    is_object = starts_object | after_space.startswith("{")
    parse = (
        F.when(F.trim(F.col("_body")) == "", F.lit(PARSE_NOT_RECORD))
        .when(~is_json & starts_object, F.lit(PARSE_TRUNCATED))
        .when(~is_json, F.lit(PARSE_NOT_RECORD))
        .when(~is_object, F.lit(PARSE_NOT_OBJECT))
        .otherwise(F.lit(PARSE_OK))
    )
    # Only a line that fails the parse needs its detail (the type is named for not_object).
    value = F.try_variant_get("_strict", "$[0]", "variant")
    detail = F.when(~is_json, F.lit("not a single JSON value")).when(
        ~is_object, F.concat(F.lit("JSON "), F.schema_of_variant(value))
    )
    columns: list[Column] = []
    for field, source in sources.items():
        if field == "event_id" and source is None:
            columns += [_content_id(F.col("_body")), F.lit("STRING")]
        elif source is None:
            columns += [F.lit(None).cast("string"), F.lit(None).cast("string")]
        else:
            v = F.col("_rec").getField(source)
            columns += [F.try_variant_get(v, "$", "string"), _type_name(v)]
    names = [n for f in CANONICAL_FIELDS for n in (text_col(f), type_col(f))]
    return frame.select(
        *lines.columns,
        parse.alias("_parse"),
        detail.alias("_parse_detail"),
        *[c.alias(n) for c, n in zip(columns, names, strict=True)],
    )


def _parse_csv(lines: DataFrame, mapping: RawMappingConfig) -> DataFrame:
    body = _body(F.col("value"))
    parts = F.split(body, re.escape(mapping.csv_delimiter), -1)
    width = len(mapping.csv_columns)
    frame = lines.withColumn("_body", body).withColumn("_parts", parts)
    count = F.size("_parts")
    blank = F.trim(F.col("_body")) == ""
    parse = F.when(blank | (count != width), F.lit(PARSE_FIELD_COUNT)).otherwise(F.lit(PARSE_OK))
    detail = F.when(blank, F.lit(f"expected {width} CSV fields, got a blank line")).otherwise(
        F.format_string(f"expected {width} CSV fields, got %d", count)
    )
    columns: list[Column] = []
    for field, source in _sources(mapping).items():
        if field == "event_id" and source is None:
            text = _content_id(F.col("_body"))
        elif source is None:
            text = F.lit(None).cast("string")
        else:
            text = F.get(F.col("_parts"), mapping.csv_columns.index(source))
        columns += [text, F.when(text.isNotNull(), F.lit("STRING"))]
    names = [n for f in CANONICAL_FIELDS for n in (text_col(f), type_col(f))]
    return frame.select(
        *lines.columns,
        parse.alias("_parse"),
        detail.alias("_parse_detail"),
        *[c.alias(n) for c, n in zip(columns, names, strict=True)],
    )
