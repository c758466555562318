"""Bronze on a hand-written log: every defect class under its code, exact reconciliation.

The log is written by the test (bytes, so invalid UTF-8 and NUL bytes are exact),
one gzip file included; each line carries the reason code it must land under.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import SparkSession
from reliability.corpus import event

from feature_engineering.bronze import BronzeResult, classify, run_bronze
from feature_engineering.config import BronzeConfig, FeatureConfig
from feature_engineering.raw_input import RawInputError, list_raw, read_numbered_lines
from jobs.build_features import main
from mtlrec.lake import Lake
from mtlrec.raw_contract import QuarantineReason as Q

pytestmark = pytest.mark.spark

DAY1, DAY2 = "2026-10-01", "2026-10-02"
MAX_LINE_BYTES = 400
# The log is mostly defects by design: the quarantine guard is checked in test_raw_hostile.
CFG = FeatureConfig(bronze=BronzeConfig(max_line_bytes=MAX_LINE_BYTES, max_quarantined_share=1))


def line(payload: Any) -> bytes:
    return json.dumps(payload, allow_nan=True).encode()


# (line bytes, expected reason or None for a good line)
DAY1_PLAIN: list[tuple[bytes, str | None]] = [
    (line(event(1)), None),
    (line(event(2, ts=1790848800123, session_id=...)), None),  # epoch ms, no session
    (b'{"event_id":"e3","ts":"2026-10-01T10:00:00Z","user_id":"u\xff1"}', Q.INVALID_ENCODING),
    (line(event(4, user_id="u\x00")).replace(b"\\u0000", b"\x00"), Q.INVALID_ENCODING),
    (line(event(5, title="x" * 500)), Q.LINE_TOO_LONG),
    (line(event(6))[:40], Q.TRUNCATED_JSON),
    (line(event(7)) + b'{"event_id":"e7b"}', Q.TRUNCATED_JSON),  # two objects on one line
    (b"ERROR collector: upstream connection reset", Q.NOT_JSON),
    (b"", Q.NOT_JSON),
    (line([event(8)]), Q.NOT_AN_OBJECT),
    (line("a string"), Q.NOT_AN_OBJECT),
    (line(event(9, user_id=...)), Q.MISSING_FIELD),
    (line(event(10, item_id=None)), Q.MISSING_FIELD),
    (line(event(11, event_id="")), Q.MISSING_FIELD),
    (line(event(12, position="abc")), Q.WRONG_TYPE),
    (line(event(13, price="cheap")), Q.WRONG_TYPE),
    (line(event(14, user_id=42)), Q.WRONG_TYPE),
    (line(event(15, ts="2026-13-45T25:61:00Z")), Q.BAD_TIMESTAMP),
    (line(event(16, ts="yesterday")), Q.BAD_TIMESTAMP),
    (line(event(17, ts="1999-03-01T00:00:00Z")), Q.TIMESTAMP_OUT_OF_WINDOW),
    (line(event(18, ts=4102444800000)), Q.TIMESTAMP_OUT_OF_WINDOW),  # 2100
    (line(event(19, event_type="page_view")), Q.UNKNOWN_EVENT_TYPE),
    (line(event(20, price=-12.5)), Q.NEGATIVE_PRICE),
    (line(event(21, price=float("nan"))), Q.INVALID_NUMBER),
    (line(event(22, price=float("inf"))), Q.INVALID_NUMBER),
    (line(event(23, quantity="NaN")), Q.INVALID_NUMBER),
    # the first failing check wins: missing field and negative price -> missing_required_field
    (line(event(24, user_id=..., price=-1)), Q.MISSING_FIELD),
    # JSON whitespace is spaces, tabs and line breaks (a CR ends the line: CRLF)
    (b" \t" + line(event(25)) + b"\r", None),
    (b"\t \t", Q.NOT_JSON),
    (b"\t[1]", Q.NOT_AN_OBJECT),
]
DAY1_GZIP: list[tuple[bytes, str | None]] = [
    (line(event(30, event_type="impression", price=..., quantity=...)), None),
    (line(event(31, event_type="click", price=None, quantity=None)), None),
]
DAY2_PLAIN: list[tuple[bytes, str | None]] = [
    (line(event(40, ts="2026-10-02T09:00:00Z")), None),
    (line(event(41, ts="2026-10-01T23:59:00Z")), None),  # late arrival: written a day later
    (line(event(42, ts="2026-10-02T09:00:00Z", event_type="teleport")), Q.UNKNOWN_EVENT_TYPE),
]
FILES = {
    f"events/dt={DAY1}/part-00000.jsonl": DAY1_PLAIN,
    f"events/dt={DAY1}/part-00001.jsonl.gz": DAY1_GZIP,
    f"events/dt={DAY2}/part-00000.jsonl": DAY2_PLAIN,
}


def write_raw(root: Path) -> None:
    for relative, lines in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(text + b"\n" for text, _ in lines)
        path.write_bytes(gzip.compress(data) if relative.endswith(".gz") else data)


def expected_reasons() -> dict[tuple[str, int], str | None]:
    return {
        (relative.split("/", 1)[1], number): reason
        for relative, lines in FILES.items()
        for number, (_, reason) in enumerate(lines, start=1)
    }


def location(source_file: str) -> str:
    """'dt=.../part-...' from an absolute source file URI."""
    return "/".join(source_file.split("/")[-2:])


@pytest.fixture(scope="module")
def ingested(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Lake, Path, BronzeResult]:
    root = tmp_path_factory.mktemp("bronze")
    write_raw(root / "raw")
    lake = Lake(str(root / "lake"), row_group_bytes=64 * 1024)
    result = run_bronze(spark, lake, str(root / "raw"), CFG, run_id="test-bronze")
    return lake, root, result


def test_reconciliation_holds_exactly(ingested: tuple[Lake, Path, BronzeResult]) -> None:
    lake, _, result = ingested
    total = sum(len(lines) for lines in FILES.values())
    good = sum(reason is None for lines in FILES.values() for _, reason in lines)
    assert result.lines_read == total
    assert (result.events, result.quarantined) == (good, total - good)
    assert lake.read_arrow("bronze/events").num_rows == good
    assert lake.read_arrow("bronze/quarantine").num_rows == total - good


def test_only_committed_files_stay_in_the_tables(ingested: tuple[Lake, Path, BronzeResult]) -> None:
    """Both writes read one staged copy of the classified lines; it is gone after the run."""
    lake, root, _ = ingested
    for table in ("bronze/events", "bronze/quarantine"):
        table_dir = root / "lake" / table
        committed = {Path(uri.removeprefix("file://")) for uri in lake.snapshot_files(table)}
        held = {p for p in table_dir.rglob("*.parquet") if "_delta_log" not in p.parts}
        assert committed and {p.resolve() for p in held} == {p.resolve() for p in committed}


def test_every_line_lands_under_its_reason_code(ingested: tuple[Lake, Path, BronzeResult]) -> None:
    lake, _, result = ingested
    quarantine = lake.read_arrow("bronze/quarantine").to_pylist()
    events = lake.read_arrow("bronze/events").to_pylist()
    got: dict[tuple[str, int], str | None] = {
        (location(r["source_file"]), r["source_line"]): r["reason"] for r in quarantine
    }
    got.update({(location(r["source_file"]), r["source_line"]): None for r in events})
    assert got == expected_reasons()
    assert set(result.by_reason) == {code.value for code in Q}, "every code is exercised"


def test_quarantine_keeps_raw_text_and_a_detail(ingested: tuple[Lake, Path, BronzeResult]) -> None:
    lake, _, _ = ingested
    rows = {
        (location(r["source_file"]), r["source_line"]): r
        for r in lake.read_arrow("bronze/quarantine").to_pylist()
    }
    raw = dict(zip(expected_reasons(), _all_lines(), strict=True))
    for key, row in rows.items():
        if row["reason"] == Q.INVALID_ENCODING:
            assert base64.b64decode(row["raw_line"]) == raw[key]
        elif row["reason"] == Q.LINE_TOO_LONG:  # only the first max_line_bytes were read
            assert row["raw_line"].encode() == raw[key][:MAX_LINE_BYTES]
            assert row["detail"].startswith(f"{len(raw[key])} bytes > ")
        else:
            assert row["raw_line"].encode() == raw[key]
        assert row["detail"], f"{key} has no detail"
        assert row["ingest_dt"] == key[0][3:13]
    wrong = rows[(f"dt={DAY1}/part-00000.jsonl", 15)]
    assert wrong["detail"] == "wrong type: position=STRING"


def _all_lines() -> list[bytes]:
    return [text for lines in FILES.values() for text, _ in lines]


def test_events_are_typed_with_source_and_days(ingested: tuple[Lake, Path, BronzeResult]) -> None:
    lake, _, _ = ingested
    events = {r["event_id"]: r for r in lake.read_arrow("bronze/events").to_pylist()}
    first = events["e-1"]
    assert first["ts"].isoformat().startswith("2026-10-01T10:00:00")
    assert (first["position"], first["price"], first["quantity"]) == (3, 12.5, 1)
    assert (first["dt"], first["ingest_dt"], first["source_line"]) == (DAY1, DAY1, 1)
    epoch = events["e-2"]
    assert epoch["ts"].isoformat().startswith("2026-10-01T10:00:00.123")
    assert epoch["session_id"] is None
    assert events["e-30"]["price"] is None and events["e-31"]["event_type"] == "click"
    late = events["e-41"]
    assert (late["dt"], late["ingest_dt"]) == (DAY1, DAY2)
    schema = lake.read_arrow("bronze/events").schema
    assert str(schema.field("position").type) == "int32"
    assert str(schema.field("source_line").type) == "int64"


def test_rerunning_a_day_replaces_exactly_its_rows(
    spark: SparkSession, ingested: tuple[Lake, Path, BronzeResult]
) -> None:
    lake, root, first = ingested
    again = run_bronze(spark, lake, str(root / "raw"), CFG, days=[DAY2])
    assert (again.lines_read, again.events) == (len(DAY2_PLAIN), 2)
    events = lake.read_arrow("bronze/events")
    assert events.num_rows == first.events
    assert len(set(events.column("event_id").to_pylist())) == first.events
    assert lake.read_arrow("bronze/quarantine").num_rows == first.quarantined


def test_mapped_keys_may_hold_any_character(spark: SparkSession, tmp_path: Path) -> None:
    """Quotes, backticks, dots and spaces in a mapped key; keys match case-sensitively."""
    keys = {"user_id": "user's id", "item_id": 'item "id"', "event_type": "kind`of", "ts": "t.s"}
    keys["price"] = "price (EUR)"
    renamed = {keys.get(k, k): v for k, v in event(1).items()}
    upper = {**renamed, "USER'S ID": "not-this-one"}
    lines = [line(renamed), line(upper), line({**renamed, "price (EUR)": float("nan")})]
    path = tmp_path / "raw" / "events" / f"dt={DAY1}" / "part-00000.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(text + b"\n" for text in lines))
    fields = CFG.raw_mapping.fields.model_copy(update=keys)
    mapping = CFG.raw_mapping.model_copy(update={"fields": fields})
    cfg = CFG.model_copy(update={"raw_mapping": mapping})
    files = list_raw(str(tmp_path / "raw"), "events", "*.jsonl*", None).files
    rows = classify(read_numbered_lines(spark, files, MAX_LINE_BYTES), cfg, None).collect()
    got = sorted((r["source_line"], r["reason"], r["user_id"], r["item_id"]) for r in rows)
    assert got == [
        (1, None, "u1", "i1"),
        (2, None, "u1", "i1"),
        # A non-finite token: the line's second, lenient parse reads the same keys.
        (3, Q.INVALID_NUMBER, "u1", "i1"),
    ]


def test_missing_input_names_the_path_and_writes_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(RawInputError, match="nowhere/events"):
        run_bronze(spark, lake, str(tmp_path / "nowhere"), CFG)
    write_raw(tmp_path / "raw")
    with pytest.raises(RawInputError, match="dt=2026-10-09"):
        run_bronze(spark, lake, str(tmp_path / "raw"), CFG, days=["2026-10-09"])
    assert not (tmp_path / "lake").exists()


def test_job_exits_2_on_missing_input_and_writes_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake_root = tmp_path / "lake"
    argv = ["--stage", "bronze", "--set", f"lake.raw_root={tmp_path / 'absent'}"]
    assert main([*argv, "--set", f"lake.root={lake_root}"]) == 2
    assert not lake_root.exists()


# ------------------------------------------------------------------ memory, as a job
ROOT = Path(__file__).resolve().parent.parent
# A heap well under Spark's 450 MiB start-up minimum needs Spark's reserved-memory knob set
# to 0 (its memory manager then sizes itself from the real, small heap). What Spark no
# longer reserves is left by a smaller memory.fraction instead: at the default 0.6 the
# partitioned write's sorter was granted pages up to where the heap had no room left for
# its own spill buffer (an OutOfMemoryError in 2 of 4 runs; 0 of 4 at 0.3).
SMALL_HEAP = "128m"
SMALL_HEAP_CONF = {"spark.testing.reservedMemory": "0", "spark.memory.fraction": "0.3"}


def _small_heap_job(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """build_features --stage bronze as its own process, its driver JVM on a small heap."""
    config = yaml.safe_load((ROOT / "cluster_configs" / "local.yaml").read_text())
    config["spark"]["conf"] = SMALL_HEAP_CONF
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config))
    argv = [
        sys.executable, "-m", "jobs.build_features", "--stage", "bronze",
        "--config", str(tmp_path / "small.yaml"),
        "--set", f"lake.raw_root={tmp_path / 'raw'}", "--set", f"lake.root={tmp_path / 'lake'}",
        "--set", f"spark.driver_memory={SMALL_HEAP}", "--set", "spark.master=local[2]",
        *overrides,
    ]  # fmt: skip
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_bronze_completes_on_a_log_several_times_its_driver_heap(tmp_path: Path) -> None:
    """384 MiB of valid events (padded to ~2 KiB a line) through a 128 MiB heap: nothing
    holds the input, the lines or the classified frame in memory."""
    per_file = (64 << 20) // (len(line(event(0, note="x" * 2000))) + 1)
    for day in range(1, 7):
        path = tmp_path / "raw" / "events" / f"dt=2026-10-0{day}" / "part-00000.jsonl"
        path.parent.mkdir(parents=True)
        ts = f"2026-10-0{day}T10:00:00Z"
        with path.open("wb") as out:
            for i in range(per_file):
                out.write(line(event(f"{day}-{i}", ts=ts, note="x" * 2000)) + b"\n")
    total = sum(p.stat().st_size for p in (tmp_path / "raw").rglob("*.jsonl"))
    assert total > 3 * (128 << 20)
    proc = _small_heap_job(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lake = Lake(str(tmp_path / "lake"))
    assert lake.read_arrow("bronze/events", columns=["source_line"]).num_rows == 6 * per_file
    assert "bronze reconciliation OK" in proc.stderr


def test_a_stage_out_of_memory_exits_1_with_one_line_naming_it_and_the_settings(
    tmp_path: Path,
) -> None:
    """A 100 MiB line (let through by max_line_bytes) cannot fit a 128 MiB heap."""
    path = tmp_path / "raw" / "events" / f"dt={DAY1}" / "part-00000.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(line(event(1, note="a" * (100 << 20))) + b"\n")
    proc = _small_heap_job(tmp_path, "--set", "features.bronze.max_line_bytes=200000000")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("build_features: bronze ran out of memory (java.lang.OutOfMemoryError")
    for setting in (
        "spark.driver_memory=128m",
        "spark.executor_memory",
        "spark.shuffle_partitions",
    ):
        assert setting in last
