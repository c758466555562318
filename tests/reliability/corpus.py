"""A corpus of malformed raw-log inputs, each class with its exact expected bronze outcome.

Every class is one file under one ingest day (``events/dt=<DAY>/<NN>-<class>.jsonl[.gz]``):
the raw bytes, and for each line the ``QuarantineReason`` it must land under, or ``None``
for a line that must reach ``bronze/events``. The expectations follow the raw contract
(DESIGN.md 4.1, ``mtlrec.raw_contract``): a line is classified by the first failing check
in ``QuarantineReason`` order, and defects that bronze does not judge (duplicates,
unknown fields) pass to silver.

Lines are built as bytes, so invalid UTF-8, NUL bytes, CRLF endings and gzip framing are
exact. ``TRUNCATED_GZIP`` is kept apart from ``build_corpus()``: a gzip stream cut short
is a file-level fault whose outcome is checked in its own run.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlrec.raw_contract import QuarantineReason as Q

DAY = "2026-10-01"
MAX_LINE_BYTES = 4096
"""The corpus runs bronze with this ``features.bronze.max_line_bytes`` (boundary classes)."""

Expected = Q | None


@dataclass(frozen=True)
class CorpusClass:
    """One malformed-input class: a file's bytes and each line's expected outcome."""

    name: str
    lines: tuple[bytes, ...]
    expected: tuple[Expected, ...]
    gzip_members: int = 0
    """0: a plain ``.jsonl`` file; n > 0: ``.jsonl.gz`` with the lines split over n members."""
    trailing_newline: bool = True
    line_separator: bytes = b"\n"

    def __post_init__(self) -> None:
        if len(self.lines) != len(self.expected):
            raise ValueError(f"{self.name}: {len(self.lines)} lines, {len(self.expected)} outcomes")

    def filename(self, index: int) -> str:
        return f"{index:02d}-{self.name}.jsonl" + (".gz" if self.gzip_members else "")

    def payload(self) -> bytes:
        """The file's bytes exactly as written to the raw directory."""
        sep = self.line_separator
        if not self.gzip_members:
            body = sep.join(self.lines)
            return body + sep if self.lines and self.trailing_newline else body
        size = -(-len(self.lines) // self.gzip_members)
        chunks = [self.lines[i : i + size] for i in range(0, len(self.lines), size)]
        return b"".join(gzip.compress(b"".join(line + sep for line in chunk)) for chunk in chunks)


def event(i: int | str, **changes: Any) -> dict[str, Any]:
    """A valid event inside the corpus day; ``field=...`` removes a field."""
    base: dict[str, Any] = {
        "event_id": f"e-{i}",
        "ts": f"{DAY}T10:00:00Z",
        "user_id": "u1",
        "session_id": "s1",
        "event_type": "add_to_cart",
        "item_id": "i1",
        "request_id": "r1",
        "position": 3,
        "page": "home",
        "device": "ios",
        "price": 12.5,
        "quantity": 1,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def js(payload: Any) -> bytes:
    """Compact JSON as Python writes it (NaN/Infinity included, as real producers emit)."""
    return json.dumps(payload, allow_nan=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sized_line(tag: str, size: int) -> bytes:
    """A valid event line of exactly ``size`` bytes (padding in an unknown field)."""
    stub = js(event(tag, note=""))
    pad = size - len(stub)
    if pad < 0:
        raise ValueError(f"size {size} is below the stub's {len(stub)} bytes")
    line = js(event(tag, note="x" * pad))
    assert len(line) == size
    return line


def _nested(depth: int) -> bytes:
    """A valid event whose unknown field ``deep`` nests ``depth`` arrays."""
    head = js(event(f"deep{depth}"))[:-1]
    return head + b',"deep":' + b"[" * depth + b"1" + b"]" * depth + b"}"


def _c(name: str, *pairs: tuple[bytes, Expected], **options: Any) -> CorpusClass:
    return CorpusClass(
        name,
        tuple(line for line, _ in pairs),
        tuple(outcome for _, outcome in pairs),
        **options,
    )


def _classes() -> list[CorpusClass]:
    ten_mb = 10 * 1024 * 1024
    return [
        # -- control: lines that must pass, so a classifier that rejects everything fails
        _c("valid_lines", (js(event("ok-1")), None), (js(event("ok-2", ts=1790848800123)), None)),
        _c(
            "valid_non_ascii",
            (js(event("na-1", user_id="ユーザー😀", item_id="ítem")), None),
            (js(event("na-2", user_id="u\\\"q\\\\")), None),
        ),
        _c("unknown_extra_fields", (js(event("xf", colour="red", nested={"a": [1]})), None)),
        _c("iso_with_offset", (js(event("tz", ts=f"{DAY}T12:00:00+02:00")), None)),
        # -- encoding
        _c(
            "invalid_utf8",
            (b'{"event_id":"bad-1","user_id":"u\xff1"}', Q.INVALID_ENCODING),
            (js(event("bad-2")).replace(b"u1", b"u\xc3"), Q.INVALID_ENCODING),  # cut sequence
            (js(event("bad-3")).replace(b"u1", b"u\xed\xa0\x80"), Q.INVALID_ENCODING),  # surrogate
            (js(event("bad-4")).replace(b"u1", b"u\xc0\xaf"), Q.INVALID_ENCODING),  # overlong
        ),
        _c(
            "nul_bytes",
            (js(event("nul-1")).replace(b"u1", b"u\x001"), Q.INVALID_ENCODING),
            (b"\x00" * 64, Q.INVALID_ENCODING),
        ),
        # -- size
        _c("line_10mb", (_sized_line("big", ten_mb), Q.LINE_TOO_LONG), (js(event("after")), None)),
        _c(
            "line_length_boundary",
            (_sized_line("at-limit", MAX_LINE_BYTES), None),
            (_sized_line("over-limit", MAX_LINE_BYTES + 1), Q.LINE_TOO_LONG),
        ),
        _c(
            "deep_nesting_moderate",  # deep but within any JSON parser's limits: a good event
            (_nested(200), None),
        ),
        _c(
            "deep_nesting_extreme",  # 1500 levels: above Jackson's 1000-level limit
            (_nested(1500), Q.TRUNCATED_JSON),
        ),
        # -- syntax
        _c(
            "truncated_json",
            (js(event("tr-1"))[:37], Q.TRUNCATED_JSON),
            (b"{", Q.TRUNCATED_JSON),
            (js(event("tr-2")) + b"}", Q.TRUNCATED_JSON),  # stray closing brace
        ),
        _c(
            "two_objects_one_line",
            (js(event("two-a")) + js(event("two-b")), Q.TRUNCATED_JSON),
            (js(event("two-c")) + b" trailing", Q.TRUNCATED_JSON),
        ),
        _c(
            "raw_control_chars",  # a raw TAB/0x01 inside a JSON string is not JSON
            (js(event("cc-1")).replace(b"u1", b"u\x011"), Q.TRUNCATED_JSON),
        ),
        _c(
            "not_json",
            (b"ERROR collector: upstream connection reset", Q.NOT_JSON),
            (b"<html><body>502 Bad Gateway</body></html>", Q.NOT_JSON),
            (b"event_id=e1 user_id=u1", Q.NOT_JSON),
        ),
        _c("blank_lines", (b"", Q.NOT_JSON), (b"   \t  ", Q.NOT_JSON)),
        _c(
            "not_an_object",
            (js([event("arr")]), Q.NOT_AN_OBJECT),
            (b"42", Q.NOT_AN_OBJECT),
            (b"null", Q.NOT_AN_OBJECT),
            (b'"a string"', Q.NOT_AN_OBJECT),
        ),
        # -- fields
        _c(
            "missing_required_fields",
            *[(js(event(f"m-{f}", **{f: ...})), Q.MISSING_FIELD) for f in _required()],
        ),
        _c(
            "null_or_blank_required",
            (js(event("nb-1", user_id=None)), Q.MISSING_FIELD),
            (js(event("nb-2", item_id="")), Q.MISSING_FIELD),
            (js(event("nb-3", event_id="")), Q.MISSING_FIELD),
            (js(event("nb-4", ts="   ")), Q.MISSING_FIELD),
        ),
        _c(
            "wrong_types",
            (js(event("wt-1", user_id=42)), Q.WRONG_TYPE),
            (js(event("wt-2", position="abc")), Q.WRONG_TYPE),
            (js(event("wt-3", price="cheap")), Q.WRONG_TYPE),
            (js(event("wt-4", item_id=["i1"])), Q.WRONG_TYPE),
            (js(event("wt-5", event_id={"id": 1})), Q.WRONG_TYPE),
            (js(event("wt-6", ts=True)), Q.WRONG_TYPE),
            (js(event("wt-7", quantity={"n": 1})), Q.WRONG_TYPE),
        ),
        _c(
            "integer_overflow",
            (js(event("of-1", quantity=10**20)), Q.WRONG_TYPE),
            (js(event("of-2", position=2**31)), Q.WRONG_TYPE),
        ),
        # -- time
        _c(
            "bad_timestamp",
            (js(event("bt-1", ts="yesterday")), Q.BAD_TIMESTAMP),
            (js(event("bt-2", ts="2026-13-45T25:61:00Z")), Q.BAD_TIMESTAMP),
            (js(event("bt-3", ts=10**19)), Q.BAD_TIMESTAMP),  # fits no timestamp
        ),
        _c(
            "far_future_timestamp",
            (js(event("ff-1", ts="9999-12-31T23:59:59Z")), Q.TIMESTAMP_OUT_OF_WINDOW),
            (js(event("ff-2", ts=4102444800000)), Q.TIMESTAMP_OUT_OF_WINDOW),  # 2100, epoch ms
            (js(event("ff-3", ts="2026-10-04T00:00:00Z")), Q.TIMESTAMP_OUT_OF_WINDOW),  # window end
        ),
        _c(
            "ancient_timestamp",
            (js(event("an-1", ts="1970-01-01T00:00:00Z")), Q.TIMESTAMP_OUT_OF_WINDOW),
            (js(event("an-2", ts=0)), Q.TIMESTAMP_OUT_OF_WINDOW),
            (js(event("an-3", ts=-86_400_000)), Q.TIMESTAMP_OUT_OF_WINDOW),
            (js(event("an-4", ts="0001-01-01T00:00:00Z")), Q.TIMESTAMP_OUT_OF_WINDOW),
            (js(event("an-5", ts="2026-09-28T23:59:59Z")), Q.TIMESTAMP_OUT_OF_WINDOW),  # start
        ),
        _c(
            "window_edges_inside",  # [day - 2, day + 1 + 2): both ends still inside
            (js(event("we-1", ts="2026-09-29T00:00:00Z")), None),
            (js(event("we-2", ts="2026-10-03T23:59:59Z")), None),
        ),
        # -- values
        _c(
            "unknown_event_types",
            (js(event("ue-1", event_type="page_view")), Q.UNKNOWN_EVENT_TYPE),
            (js(event("ue-2", event_type="CLICK")), Q.UNKNOWN_EVENT_TYPE),
        ),
        _c(
            "negative_price",
            (js(event("np-1", price=-12.5)), Q.NEGATIVE_PRICE),
            (js(event("np-2", price=-0.01)), Q.NEGATIVE_PRICE),
        ),
        _c(
            "non_finite_numbers",
            (js(event("nf-1", price=float("nan"))), Q.INVALID_NUMBER),
            (js(event("nf-2", price=float("inf"))), Q.INVALID_NUMBER),
            (js(event("nf-3", price=float("-inf"))), Q.INVALID_NUMBER),  # not negative_price
            (js(event("nf-4", quantity="NaN")), Q.INVALID_NUMBER),
        ),
        _c(
            "first_failure_wins",
            (js(event("ff", user_id=..., price=-1)), Q.MISSING_FIELD),
            (js(event("ff2", event_type="x", price=-1)), Q.UNKNOWN_EVENT_TYPE),
        ),
        # -- duplicates pass bronze (silver dedups them); both copies must land
        _c(
            "duplicate_event_ids",
            (js(event("dup")), None),
            (js(event("dup", item_id="i2", price=99.0)), None),
            (js(event("dup")), None),
        ),
        # -- file framing
        _c("empty_file"),
        _c("no_trailing_newline", (js(event("nt-1")), None), (js(event("nt-2")), None),
           trailing_newline=False),
        _c("crlf_line_endings", (js(event("cr-1")), None), (b"not json", Q.NOT_JSON),
           line_separator=b"\r\n"),
        _c("gzip_file", (js(event("gz-1")), None), (b"oops", Q.NOT_JSON), gzip_members=1),
        _c(
            "gzip_concatenated_members",
            *[(js(event(f"gm-{i}")), None) for i in range(4)],
            gzip_members=2,
        ),
    ]  # fmt: skip


def _required() -> tuple[str, ...]:
    from mtlrec.raw_contract import REQUIRED_FIELDS

    return REQUIRED_FIELDS


def build_corpus() -> list[CorpusClass]:
    """Every class that one bronze run ingests together."""
    classes = _classes()
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError("corpus class names must be unique")
    return classes


def write_corpus(raw_root: Path, classes: list[CorpusClass], day: str = DAY) -> None:
    day_dir = raw_root / "events" / f"dt={day}"
    day_dir.mkdir(parents=True, exist_ok=True)
    for index, cls in enumerate(classes):
        (day_dir / cls.filename(index)).write_bytes(cls.payload())


def expected_outcomes(classes: list[CorpusClass]) -> dict[tuple[str, int], Expected]:
    """``(file name, 1-based line) -> reason`` for every line the corpus holds."""
    return {
        (cls.filename(index), number): outcome
        for index, cls in enumerate(classes)
        for number, outcome in enumerate(cls.expected, start=1)
    }


# ---------------------------------------------------------------------- truncated gzip
@dataclass(frozen=True)
class TruncatedGzip:
    """A gzip file cut mid-stream, with what a reader can recover from it."""

    payload: bytes
    recoverable_lines: tuple[bytes, ...]
    """The complete lines before the cut (a partial last line follows them)."""
    partial_line: bytes


def truncated_gzip(lines: int = 400, keep: float = 0.5) -> TruncatedGzip:
    """``lines`` valid events gzip-compressed, the stream cut at ``keep`` of its bytes."""
    body = b"".join(js(event(f"tg-{i}", note=f"{i:08d}" * 8)) + b"\n" for i in range(lines))
    whole = gzip.compress(body)
    cut = whole[: int(len(whole) * keep)]
    recovered = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(cut)
    complete, _, partial = recovered.rpartition(b"\n")
    return TruncatedGzip(cut, tuple(complete.split(b"\n")), partial)

