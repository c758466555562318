"""Hostile raw roots: every entry under the events directory is read or skipped with a
reason, paths are read literally, nothing outside the raw root is read (issue 17).

The tests write their own raw root: hidden and glob-character names, a name that is not
UTF-8, a symlink out of the raw root and one inside it, a zip, a fake ``.gz``, a gzip
bomb, a lone surrogate, misnamed folders and extensions, a FIFO. The listing tests need
no Spark; one module-scoped bronze run (plus a re-run) covers the Spark side.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from feature_engineering.bronze import BronzeResult, QuarantineShareError, run_bronze
from feature_engineering.config import BronzeConfig, FeatureConfig
from feature_engineering.raw_input import RawInputError, list_raw
from jobs.build_features import main
from mtlrec.lake import Lake
from mtlrec.raw_contract import FormatReason, SkipReason
from mtlrec.raw_contract import QuarantineReason as Q
from mtlrec.storage import StorageError

DAY = "2026-10-01"
MAX_LINE_BYTES = 1024
BOMB_LINE_BYTES = 64 << 20


def event(i: int, **fields: Any) -> bytes:
    record = {"event_id": f"e{i}", "ts": f"{DAY}T10:00:00Z", "user_id": f"u{i}",
              "event_type": "click", "item_id": "i1"}  # fmt: skip
    record.update(fields)
    return json.dumps(record).encode() + b"\n"


LONE_SURROGATE = b'{"event_id":"s1","ts":"2026-10-01T10:00:00Z","user_id":"\\ud800",' \
    b'"event_type":"click","item_id":"i1"}\n'  # fmt: skip
PAIRED = b'{"event_id":"s2","ts":"2026-10-01T10:00:00Z","user_id":"\\ud83d\\ude00",' \
    b'"event_type":"click","item_id":"i1"}\n'  # fmt: skip

# name inside dt=DAY -> (bytes, expected outcome per line: None = event)
READ: dict[bytes, tuple[bytes, list[str | None]]] = {
    b"a.jsonl": (event(1) + event(2), [None, None]),
    b".hidden.jsonl": (event(3), [None]),
    b"_under.jsonl": (event(4), [None]),
    b"x*.jsonl": (event(5), [None]),
    b"xy.jsonl": (event(6), [None]),
    b"a:b.jsonl": (event(7), [None]),
    b"{a,b}.jsonl": (event(8), [None]),
    b"[1].jsonl": (event(9), [None]),
    b"a\\b.jsonl": (event(10), [None]),
    b"sp ace%20.jsonl": (event(11), [None]),
    b"caf\xe9.jsonl": (event(12), [None]),  # not UTF-8: a legal Linux name
    b"fake.jsonl.gz": (event(13) + event(14) + event(15), [FormatReason.NOT_GZIP] * 3),
    b"bomb.jsonl.gz": (
        gzip.compress(b"x" * BOMB_LINE_BYTES + b"\n" + event(16)),
        [Q.LINE_TOO_LONG, None],
    ),
    b"surrogate.jsonl": (LONE_SURROGATE + PAIRED, [Q.INVALID_ENCODING, None]),
}
# name inside dt=DAY -> skip reason (what the entry is, is made in make_raw_root)
SKIPPED_IN_DAY = {
    b"notes.txt": SkipReason.NOT_MATCHING_GLOB,
    b"EVENTS.JSONL": SkipReason.NOT_MATCHING_GLOB,
    b"dump.jsonl.zip": SkipReason.UNSUPPORTED_COMPRESSION,
    b"passwd.jsonl": SkipReason.SYMLINK_OUTSIDE_ROOT,
    b"broken.jsonl": SkipReason.UNREADABLE,
    b"nested": SkipReason.NOT_A_REGULAR_FILE,
    b"pipe.jsonl": SkipReason.NOT_A_REGULAR_FILE,
}
SKIPPED_AT_TOP = {
    "dt=20171126": SkipReason.NOT_AN_INGEST_DAY,
    "dt=2026-02-30": SkipReason.INVALID_DAY,
    "README.md": SkipReason.NOT_AN_INGEST_DAY,
    "dt=2026-10-02": SkipReason.SYMLINK_OUTSIDE_ROOT,
}
LINKED_INSIDE = b"inside.jsonl"  # a symlink to a file elsewhere inside the raw root: read


def make_raw_root(base: Path) -> Path:
    raw = base / "raw"
    day = os.fsencode(raw / "events" / f"dt={DAY}")
    os.makedirs(day)
    for name, (data, _) in READ.items():
        with open(os.path.join(day, name), "wb") as out:
            out.write(data)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "dt=2026-10-02").mkdir()
    (outside / "dt=2026-10-02" / "stolen.jsonl").write_bytes(event(90))
    (raw / "shared").mkdir()
    (raw / "shared" / "in.jsonl").write_bytes(event(17))
    os.symlink(raw / "shared" / "in.jsonl", os.path.join(day, LINKED_INSIDE))
    for name in (b"notes.txt", b"EVENTS.JSONL", b"dump.jsonl.zip"):
        with open(os.path.join(day, name), "wb") as out:
            out.write(event(99))
    os.symlink(outside / "secret.txt", os.path.join(day, b"passwd.jsonl"))
    os.symlink(raw / "missing.jsonl", os.path.join(day, b"broken.jsonl"))
    os.mkdir(os.path.join(day, b"nested"))
    os.mkfifo(os.path.join(day, b"pipe.jsonl"))
    for name in ("dt=20171126", "dt=2026-02-30"):
        (raw / "events" / name).mkdir()
        (raw / "events" / name / "part.jsonl").write_bytes(event(98))
    (raw / "events" / "README.md").write_text("how the logs are shipped\n")
    os.symlink(outside / "dt=2026-10-02", raw / "events" / "dt=2026-10-02")
    return raw


# ---------------------------------------------------------------------- listing (no Spark)
@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw_root(tmp_path_factory.mktemp("hostile"))


def test_every_entry_is_listed_for_reading_or_skipped_with_its_reason(raw_root: Path) -> None:
    listing = list_raw(str(raw_root), "events", "*.jsonl*", None)
    assert listing.days == [DAY]
    read = sorted(f.source_file.rsplit("/", 1)[-1] for f in listing.files)
    expected_read = sorted([*(n.decode("utf-8", "backslashreplace") for n in READ), "inside.jsonl"])
    assert read == expected_read
    skipped = {s.path.rsplit("/", 1)[-1]: (s.reason, s.ingest_dt) for s in listing.skipped}
    expected = {n.decode(): (r, DAY) for n, r in SKIPPED_IN_DAY.items()}
    expected.update({n: (r, None) for n, r in SKIPPED_AT_TOP.items()})
    assert skipped == expected
    details = {s.path.rsplit("/", 1)[-1]: s.detail for s in listing.skipped}
    assert "rename it dt=2017-11-26" in details["dt=20171126"]
    assert "ignoring case" in details["EVENTS.JSONL"]
    assert "outside lake.raw_root" in details["passwd.jsonl"]


def test_a_file_is_opened_by_its_literal_name(raw_root: Path) -> None:
    listing = list_raw(str(raw_root), "events", "*.jsonl*", None)
    by_name = {f.source_file.rsplit("/", 1)[-1]: f for f in listing.files}
    assert by_name["caf\\xe9.jsonl"].locator.endswith(b"/caf\xe9.jsonl")
    with open(by_name["x*.jsonl"].locator, "rb") as handle:
        assert handle.read() == READ[b"x*.jsonl"][0]


def test_only_the_requested_days_are_listed_and_a_missing_one_is_named(raw_root: Path) -> None:
    listing = list_raw(str(raw_root), "events", "*.jsonl*", [DAY])
    assert listing.days == [DAY]
    with pytest.raises(RawInputError, match="dt=2026-10-09"):
        list_raw(str(raw_root), "events", "*.jsonl*", ["2026-10-09"])


def test_nothing_to_read_names_the_path_and_the_skip_reasons(tmp_path: Path) -> None:
    day = tmp_path / "raw" / "events" / f"dt={DAY}"
    day.mkdir(parents=True)
    (day / "UserBehavior.csv.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(RawInputError, match="unsupported_compression"):
        list_raw(str(tmp_path / "raw"), "events", "*.csv*", None)


@pytest.mark.skipif(not Path("/usr/bin/setpriv").exists(), reason="needs setpriv to drop root")
def test_a_file_without_read_permission_is_skipped_as_unreadable() -> None:
    """Root reads any file, so the listing runs as ``nobody`` when the tests run as root."""
    checkout = Path(__file__).resolve().parent.parent
    closed = [d for d in (checkout, *checkout.parents) if not d.stat().st_mode & 0o001]
    if os.geteuid() == 0 and closed:
        pytest.skip(f"user nobody cannot reach the checkout to import it: {closed[0]} is 0o700")
    base = Path(tempfile.mkdtemp(prefix="mtlrec-perm-"))
    try:
        base.chmod(0o755)
        day = base / "raw" / "events" / f"dt={DAY}"
        day.mkdir(parents=True)
        for part in (base / "raw", base / "raw" / "events", day):
            part.chmod(0o755)
        (day / "open.jsonl").write_bytes(event(1))
        (day / "open.jsonl").chmod(0o644)
        (day / "closed.jsonl").write_bytes(event(2))
        (day / "closed.jsonl").chmod(0o000)
        script = (
            "import sys; from feature_engineering.raw_input import list_raw; "
            f"l = list_raw({str(base / 'raw')!r}, 'events', '*.jsonl', None); "
            "print([f.source_file.rsplit('/', 1)[-1] for f in l.files]); "
            "print([(s.path.rsplit('/', 1)[-1], s.reason.value) for s in l.skipped])"
        )
        command = [sys.executable, "-c", script]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        run = subprocess.run(
            command, capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == [
            "['open.jsonl']",
            "[('closed.jsonl', 'unreadable')]",
        ]
    finally:
        for path in sorted(base.rglob("*"), reverse=True):
            path.chmod(0o700)
        subprocess.run(["rm", "-rf", str(base)], check=True)


@pytest.mark.parametrize("root", ["/", "/etc", "/usr/lib/lake", "/tmp", "file:///"])
def test_a_lake_root_that_is_a_system_directory_is_refused(root: str) -> None:
    with pytest.raises(StorageError, match="system directory"):
        Lake(root)


def test_the_job_exits_2_on_lake_root_slash_and_writes_nothing(tmp_path: Path) -> None:
    before = set(os.listdir("/"))
    argv = ["--stage", "bronze", "--set", "lake.root=/", "--set", f"lake.raw_root={tmp_path}"]
    assert main(argv) == 2
    assert set(os.listdir("/")) == before


# ---------------------------------------------------------------------- bronze on Spark
@pytest.fixture(scope="module")
def ingested(
    spark: SparkSession, raw_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Lake, BronzeResult]:
    lake = Lake(str(tmp_path_factory.mktemp("hostile-lake") / "lake"))
    config = FeatureConfig(
        bronze=BronzeConfig(max_line_bytes=MAX_LINE_BYTES, max_quarantined_share=1)
    )
    return lake, run_bronze(spark, lake, str(raw_root), config, run_id="hostile")


def _landed(lake: Lake) -> dict[tuple[bytes, int], str | None]:
    rows = [
        (r["source_file"], r["source_line"], r["reason"])
        for r in lake.read_arrow("bronze/quarantine").to_pylist()
    ] + [
        (r["source_file"], r["source_line"], None)
        for r in lake.read_arrow("bronze/events").to_pylist()
    ]
    landed = {(_segment(f), n): reason for f, n, reason in rows}
    assert len(landed) == len(rows), "a line landed twice"
    return landed


def _segment(source_file: str) -> bytes:
    name = source_file.rsplit("/", 1)[-1]
    return b"caf\xe9.jsonl" if name == "caf\\xe9.jsonl" else name.encode()


@pytest.mark.spark
def test_every_line_of_every_read_file_lands_once_under_its_reason(
    ingested: tuple[Lake, BronzeResult],
) -> None:
    lake, result = ingested
    expected = {
        (name, number): (None if outcome is None else str(outcome))
        for name, (_, outcomes) in READ.items()
        for number, outcome in enumerate(outcomes, start=1)
    }
    expected[(LINKED_INSIDE, 1)] = None
    assert _landed(lake) == expected
    assert result.lines_read == len(expected)
    assert (result.files, result.skipped_files) == (len(READ) + 1, 11)


@pytest.mark.spark
def test_skipped_entries_are_a_table_and_nothing_outside_the_root_is_read(
    ingested: tuple[Lake, BronzeResult],
) -> None:
    lake, result = ingested
    rows = lake.read_arrow("bronze/skipped_files").to_pylist()
    got = {(r["path"].rsplit("/", 1)[-1], r["reason"], r["ingest_dt"]) for r in rows}
    expected = {(n.decode(), r.value, DAY) for n, r in SKIPPED_IN_DAY.items()}
    expected |= {(n, r.value, None) for n, r in SKIPPED_AT_TOP.items()}
    assert got == expected
    assert sum(result.skipped_by_reason.values()) == len(rows)
    lines = [r["raw_line"] for r in lake.read_arrow("bronze/quarantine").to_pylist()]
    assert not any("root:x:0:0" in line for line in lines)
    assert "e90" not in set(lake.read_arrow("bronze/events").column("event_id").to_pylist())


@pytest.mark.spark
def test_bytes_of_a_fake_gz_and_the_head_of_a_bomb_line_are_kept(
    ingested: tuple[Lake, BronzeResult],
) -> None:
    lake, _ = ingested
    rows = {
        (_segment(r["source_file"]), r["source_line"]): r
        for r in lake.read_arrow("bronze/quarantine").to_pylist()
    }
    fake = READ[b"fake.jsonl.gz"][0].splitlines()
    for number, line in enumerate(fake, start=1):
        row = rows[(b"fake.jsonl.gz", number)]
        assert row["raw_line"].encode() == line and "not gzip" in row["detail"]
    bomb = rows[(b"bomb.jsonl.gz", 1)]
    assert bomb["raw_line"] == "x" * MAX_LINE_BYTES
    assert bomb["detail"].startswith(f"{BOMB_LINE_BYTES} bytes > ")
    surrogate = rows[(b"surrogate.jsonl", 1)]
    assert surrogate["raw_line"].encode() == LONE_SURROGATE.rstrip(b"\n")
    assert "lone surrogate" in surrogate["detail"]


@pytest.mark.spark
def test_a_paired_surrogate_escape_is_decoded_and_names_are_kept_literally(
    ingested: tuple[Lake, BronzeResult],
) -> None:
    lake, _ = ingested
    events = {r["event_id"]: r for r in lake.read_arrow("bronze/events").to_pylist()}
    assert events["s2"]["user_id"] == "\U0001f600"
    assert events["e5"]["source_file"].endswith(f"/dt={DAY}/x*.jsonl")
    assert events["e12"]["source_file"].endswith(f"/dt={DAY}/caf\\xe9.jsonl")


@pytest.mark.spark
def test_the_guard_exits_1_after_writing_and_a_rerun_replaces_every_table(
    spark: SparkSession, raw_root: Path, ingested: tuple[Lake, BronzeResult]
) -> None:
    lake, first = ingested
    before = {t: lake.read_arrow(t).num_rows for t in _TABLES}
    config = FeatureConfig(bronze=BronzeConfig(max_line_bytes=MAX_LINE_BYTES))
    with pytest.raises(QuarantineShareError) as failure:
        run_bronze(spark, lake, str(raw_root), config, run_id="hostile-again")
    message = str(failure.value)
    assert "max_quarantined_share=0.05" in message and "not_gzip (3)" in message
    assert {t: lake.read_arrow(t).num_rows for t in _TABLES} == before
    assert before["bronze/events"] == first.events


_TABLES = ("bronze/events", "bronze/quarantine", "bronze/skipped_files")


def test_the_guard_names_the_window_for_a_dump_in_one_folder() -> None:
    """Unit check of the message for the Taobao case (the Spark path is tested above)."""
    from feature_engineering.bronze import check_quarantined_share

    result = BronzeResult([DAY], 4321, 1110, 3211, {"timestamp_out_of_window": 3211})
    with pytest.raises(QuarantineShareError, match=r"features\.bronze\.window \(from_data"):
        check_quarantined_share(result, BronzeConfig())
    check_quarantined_share(result, BronzeConfig(max_quarantined_share=0.75))
