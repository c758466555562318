"""The raw-log contract (DESIGN.md 4.1) shared by the generator and the bronze job.

The generator injects each defect class and records its count in a manifest;
the bronze job quarantines lines under exactly these reason codes, so a test
can compare the two. Defects that are *not* quarantined (duplicates, unknown
items, bots, late arrivals) are handled by the silver job and counted there.
"""

from __future__ import annotations

from enum import StrEnum

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
PAGES = ("home", "search", "category", "pdp")
DEVICES = ("ios", "android", "web")
REQUIRED_FIELDS = ("event_id", "ts", "user_id", "event_type", "item_id")


class QuarantineReason(StrEnum):
    """Why bronze rejected a line. One code per defect class, checked in this order."""

    INVALID_ENCODING = "invalid_encoding"  # bytes that are not UTF-8 (NUL bytes included)
    LINE_TOO_LONG = "line_too_long"  # longer than bronze.max_line_bytes
    TRUNCATED_JSON = "truncated_json"  # starts like a JSON object but does not parse
    NOT_JSON = "not_json"  # does not parse and does not start with '{'
    NOT_AN_OBJECT = "not_an_object"  # valid JSON, but not an object
    MISSING_FIELD = "missing_required_field"  # a REQUIRED_FIELDS entry absent, null or empty
    WRONG_TYPE = "wrong_type"  # a field of the wrong JSON type (e.g. position "abc")
    BAD_TIMESTAMP = "bad_timestamp"  # ts neither ISO-8601 nor epoch ms
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"  # far outside the run window
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    NEGATIVE_PRICE = "negative_price"
    INVALID_NUMBER = "invalid_number"  # NaN / Infinity / non-finite price or quantity


class SilverOutcome(StrEnum):
    """Defects that pass bronze and are resolved, flagged or counted in silver."""

    DUPLICATE_EVENT = "duplicate_event"  # same event_id delivered again
    UNKNOWN_ITEM = "unknown_item"  # item_id not in the catalog: kept, flagged
    BOT_USER = "bot_user"  # absurd activity: moved to silver/bot_events
    LATE_ARRIVAL = "late_arrival"  # written into the next day's partition


class FormatReason(StrEnum):
    """Quarantine codes that come from the file's format, not a line's content.

    Kept apart from ``QuarantineReason`` because the JSON Lines generator has no rate
    for them: they occur in CSV logs and in files that are not what their name says.
    """

    NOT_GZIP = "not_gzip"  # a line of a file named .gz that is not gzip (kept as stored)
    CSV_HEADER = "csv_header"  # the first line of a CSV file with raw_mapping.csv_header
    WRONG_FIELD_COUNT = "wrong_field_count"  # a CSV line with more or fewer fields (or blank)
    TRUNCATED_RECORD = "truncated_record"  # CSV: the tail of a gzip stream cut short


class SkipReason(StrEnum):
    """Why an entry under the raw events directory was not read (``bronze/skipped_files``)."""

    NOT_AN_INGEST_DAY = "not_an_ingest_day"  # directly under events_dir, not dt=YYYY-MM-DD/
    INVALID_DAY = "invalid_day"  # dt=YYYY-MM-DD that is no calendar day (dt=2026-02-30)
    NOT_MATCHING_GLOB = "not_matching_glob"  # not matching raw_mapping.file_glob
    UNSUPPORTED_COMPRESSION = "unsupported_compression"  # .zip, .bz2, ...: refused by name
    SYMLINK_OUTSIDE_ROOT = "symlink_outside_root"  # a link leaving lake.raw_root
    UNREADABLE = "unreadable"  # open or list failed (permissions, a broken link)
    NOT_A_REGULAR_FILE = "not_a_regular_file"  # a nested directory, FIFO, socket or device
