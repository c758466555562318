"""Line-level defects: corrupted copies and re-deliveries of real events.

Every defect is an ADDITIONAL line derived from a real (truthful) event, never a
replacement, so each real event survives cleaning exactly once. Each corrupted
copy carries exactly one defect, chosen so that the bronze job's checks (in the
order of ``QuarantineReason``) classify it under its own code and no earlier one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from mtlrec.raw_contract import REQUIRED_FIELDS, QuarantineReason, SilverOutcome
from mtlrec.synthetic.config import DirtConfig

_BAD_BYTES = (b"\xff", b"\xc3\x28", b"\xe9", b"\x00")  # lone 0xFF, broken pair, latin-1, NUL
_NOT_JSON = (
    "<html><body><h1>502 Bad Gateway</h1></body></html>",
    "ERROR collector: upstream connection reset by peer",
    "event_id={event_id} user_id={user_id} event_type={event_type}",
    "--- log rotated ---",
)
_BAD_TIMESTAMPS = ("not-a-timestamp", "2026-13-45T25:61:00Z", "yesterday", "0000-00-00T00:00:00")
_UNKNOWN_TYPES = ("page_view", "wishlist_add", "share", "scroll_depth", "refund_request")
_WRONG_POSITIONS = ("abc", "top", "1st")
_WRONG_PRICES = ("n/a", "cheap", "12,99 EUR")
# Far outside any run window: a stuck device clock in the past, a bad default in the future.
_FAR_YEARS = (1970, 1999, 2001, 2099, 2150)
_YEAR_MS = 365 * 86_400_000


@dataclasses.dataclass(frozen=True)
class Injection:
    """One extra line, written into the file of event ``source``."""

    source: int
    line: bytes
    defect: str
    after_source: bool  # re-deliveries come after their original


def _event(line: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def _dump(event: Any) -> bytes:
    # allow_nan writes the bare tokens NaN / Infinity, as some producers do
    return json.dumps(event, separators=(",", ":"), allow_nan=True).encode()


def _pick(rng: np.random.Generator, options: tuple[Any, ...]) -> Any:
    return options[int(rng.integers(len(options)))]


def _invalid_encoding(rng: np.random.Generator, line: bytes) -> bytes:
    start = line.index(b'"event_id":"') + len(b'"event_id":"')
    cut = start + int(rng.integers(1, 8))
    return line[:cut] + _pick(rng, _BAD_BYTES) + line[cut:]


def _line_too_long(limit: int) -> Callable[[np.random.Generator, bytes], bytes]:
    def make(rng: np.random.Generator, line: bytes) -> bytes:
        pad = max(limit - len(line), 0) + 64
        return line[:-1] + b',"debug_payload":"' + b"A" * pad + b'"}'

    return make


def _truncated_json(rng: np.random.Generator, line: bytes) -> bytes:
    # a proper prefix of a JSON object never parses: its closing brace is missing
    return line[: int(rng.integers(max(2, len(line) // 4), len(line) - 1))]


def _not_json(rng: np.random.Generator, line: bytes) -> bytes:
    return str(_pick(rng, _NOT_JSON)).format(**_event(line)).encode()


def _not_an_object(rng: np.random.Generator, line: bytes) -> bytes:
    event = _event(line)
    variant = int(rng.integers(3))
    if variant == 0:
        return _dump([event])
    if variant == 1:
        return _dump(list(event.values()))
    return _dump(line.decode())


def _missing_field(rng: np.random.Generator, line: bytes) -> bytes:
    event = _event(line)
    name = _pick(rng, REQUIRED_FIELDS)
    variant = int(rng.integers(3))
    if variant == 0:
        del event[name]
    else:
        event[name] = None if variant == 1 else ""
    return _dump(event)


def _wrong_type(rng: np.random.Generator, line: bytes) -> bytes:
    event = _event(line)
    if "position" in event:
        event["position"] = _pick(rng, _WRONG_POSITIONS)
    else:
        event["price"] = _pick(rng, _WRONG_PRICES)
    return _dump(event)


def _bad_timestamp(rng: np.random.Generator, line: bytes) -> bytes:
    event = _event(line)
    event["ts"] = _pick(rng, _BAD_TIMESTAMPS)
    return _dump(event)


def _out_of_window(rng: np.random.Generator, line: bytes) -> bytes:
    event = _event(line)
    year = int(_pick(rng, _FAR_YEARS))
    ms = (year - 1970) * _YEAR_MS + int(rng.integers(0, _YEAR_MS))
    if isinstance(event["ts"], int):
        event["ts"] = ms
    else:
        iso = np.datetime_as_string(np.datetime64(ms, "ms"), unit="ms")
        event["ts"] = f"{iso}Z"
    return _dump(event)


def _unknown_type(rng: np.random.Generator, line: bytes) -> bytes:
    event = _event(line)
    event["event_type"] = _pick(rng, _UNKNOWN_TYPES)
    return _dump(event)


def _negative_price(catalog_price: float) -> Callable[[np.random.Generator, bytes], bytes]:
    def make(rng: np.random.Generator, line: bytes) -> bytes:
        event = _event(line)
        event["price"] = -float(event.get("price", catalog_price))
        return _dump(event)

    return make


def _invalid_number(rng: np.random.Generator, line: bytes) -> bytes:
    event = _event(line)
    event["price"] = float("nan") if rng.random() < 0.6 else float("inf")
    return _dump(event)


def _duplicate(rng: np.random.Generator, line: bytes) -> bytes:
    return line


# defects whose copy needs a price to act on prefer carts and purchases as sources
_PRICED = frozenset({QuarantineReason.NEGATIVE_PRICE.value, QuarantineReason.INVALID_NUMBER.value})
INJECTED_HERE: tuple[str, ...] = (
    *(reason.value for reason in QuarantineReason),
    SilverOutcome.DUPLICATE_EVENT.value,
)
"""Defect classes this module injects (unknown items, bots and late arrivals are events)."""


def inject_defects(
    rng: np.random.Generator, dirt: DirtConfig, lines: list[bytes], real: np.ndarray,
    priced: np.ndarray, catalog_price: np.ndarray,
) -> list[Injection]:
    """Extra defect lines for one partition.

    ``real`` are the indices of truthful events (the only sources), ``priced`` the subset
    that carries a price, ``catalog_price`` the catalog price of each event's item (used
    when a priced defect must be made from an event without a price).
    """
    injections: list[Injection] = []
    if len(real) == 0:
        return injections
    for defect in INJECTED_HERE:
        count = int(rng.binomial(len(real), dirt.rate(defect)))
        if count == 0:
            continue
        pool = priced if defect in _PRICED and len(priced) else real
        for source in rng.choice(pool, size=count).tolist():
            make = _maker(defect, dirt, float(catalog_price[source]))
            injections.append(Injection(
                source=source, line=make(rng, lines[source]), defect=defect,
                after_source=defect == SilverOutcome.DUPLICATE_EVENT.value,
            ))
    return injections


def _maker(
    defect: str, dirt: DirtConfig, catalog_price: float
) -> Callable[[np.random.Generator, bytes], bytes]:
    makers: dict[str, Callable[[np.random.Generator, bytes], bytes]] = {
        QuarantineReason.INVALID_ENCODING: _invalid_encoding,
        QuarantineReason.LINE_TOO_LONG: _line_too_long(dirt.long_line_bytes),
        QuarantineReason.TRUNCATED_JSON: _truncated_json,
        QuarantineReason.NOT_JSON: _not_json,
        QuarantineReason.NOT_AN_OBJECT: _not_an_object,
        QuarantineReason.MISSING_FIELD: _missing_field,
        QuarantineReason.WRONG_TYPE: _wrong_type,
        QuarantineReason.BAD_TIMESTAMP: _bad_timestamp,
        QuarantineReason.TIMESTAMP_OUT_OF_WINDOW: _out_of_window,
        QuarantineReason.UNKNOWN_EVENT_TYPE: _unknown_type,
        QuarantineReason.NEGATIVE_PRICE: _negative_price(max(catalog_price, 0.01)),
        QuarantineReason.INVALID_NUMBER: _invalid_number,
        SilverOutcome.DUPLICATE_EVENT: _duplicate,
    }
    return makers[defect]
