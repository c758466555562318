"""Bad input: the bronze job ingests the malformed corpus, accounting for every line.

One real ``jobs.build_features --stage bronze`` run over all corpus classes
(``tests/reliability/corpus.py``): it must exit 0, every line must land exactly once
(in ``bronze/events`` or under its reason code in ``bronze/quarantine``), quarantined
lines keep their raw bytes, and the job's memory stays bounded with a 10 MB line in the
input (the JVM heap is capped at 1 GiB; a reader that buffered whole files or exploded a
line would fail or grow past the bound).
"""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from feature_engineering.bronze import run_bronze
from feature_engineering.config import BronzeConfig, FeatureConfig
from mtlrec.lake import Lake
from mtlrec.raw_contract import QuarantineReason as Q
from reliability.corpus import (
    DAY,
    MAX_LINE_BYTES,
    CorpusClass,
    build_corpus,
    event,
    expected_outcomes,
    js,
    truncated_gzip,
    write_corpus,
)
from reliability.harness import SMALL_SPARK, JobRun, job_command, run_job

pytestmark = [pytest.mark.spark, pytest.mark.slow]

MEMORY_BOUND = 3 * 1024**3
"""Python driver + a JVM with a 1 GiB heap; the 10 MB line must not push the tree past it."""


def _where(source_file: str) -> str:
    return source_file.rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, list[CorpusClass], JobRun]:
    root = tmp_path_factory.mktemp("corpus")
    classes = build_corpus()
    write_corpus(root / "raw", classes)
    run = run_job(
        job_command(
            "build_features",
            "--stage",
            "bronze",
            "--run-id",
            "corpus",
            overrides=[
                f"lake.root={root / 'lake'}",
                f"lake.raw_root={root / 'raw'}",
                f"features.bronze.max_line_bytes={MAX_LINE_BYTES}",
                "features.bronze.max_quarantined_share=1",  # the corpus is mostly defects
                *SMALL_SPARK,
            ],
        ),
        timeout=540,
    )
    return Lake(str(root / "lake")), classes, run


@pytest.mark.timeout(600)
def test_corpus_has_the_required_breadth() -> None:
    classes = build_corpus()
    assert len(classes) >= 25
    reasons = {outcome for cls in classes for outcome in cls.expected}
    assert reasons == {*Q, None}, "every reason code, and good lines, are exercised"


@pytest.mark.timeout(600)
def test_bronze_exits_zero_and_reconciles(
    corpus_run: tuple[Lake, list[CorpusClass], JobRun],
) -> None:
    lake, classes, run = corpus_run
    assert run.returncode == 0, run.stderr[-4000:]
    total = sum(len(cls.lines) for cls in classes)
    good = sum(outcome is None for cls in classes for outcome in cls.expected)
    assert f"lines_read={total} events={good} quarantined={total - good}" in run.stderr
    assert lake.read_arrow("bronze/events").num_rows == good
    assert lake.read_arrow("bronze/quarantine").num_rows == total - good


@pytest.mark.timeout(600)
def test_every_line_lands_once_under_its_reason(
    corpus_run: tuple[Lake, list[CorpusClass], JobRun],
) -> None:
    lake, classes, run = corpus_run
    assert run.returncode == 0, run.stderr[-4000:]
    landed = [
        ((_where(r["source_file"]), r["source_line"]), r["reason"])
        for r in lake.read_arrow("bronze/quarantine").to_pylist()
    ] + [
        ((_where(r["source_file"]), r["source_line"]), None)
        for r in lake.read_arrow("bronze/events").to_pylist()
    ]
    got = dict(landed)
    assert len(got) == len(landed), "a line landed twice"
    expected = {k: (None if r is None else r.value) for k, r in expected_outcomes(classes).items()}
    wrong = {
        key: {"expected": expected.get(key, "<no such line>"), "got": got.get(key, "<lost>")}
        for key in sorted(set(expected) | set(got))
        if expected.get(key, "<no such line>") != got.get(key, "<lost>")
    }
    assert not wrong, wrong


@pytest.mark.timeout(600)
def test_quarantine_keeps_the_raw_bytes(
    corpus_run: tuple[Lake, list[CorpusClass], JobRun],
) -> None:
    lake, classes, _ = corpus_run
    raw = {
        (cls.filename(index), number): line
        for index, cls in enumerate(classes)
        for number, line in enumerate(cls.lines, start=1)
    }
    rows = lake.read_arrow("bronze/quarantine").to_pylist()
    assert rows
    for row in rows:
        key = (_where(row["source_file"]), row["source_line"])
        stored = row["raw_line"]
        original = raw[key]
        if row["reason"] == Q.LINE_TOO_LONG:  # only the first max_line_bytes are read
            assert stored.encode() == original[:MAX_LINE_BYTES], key
        elif row["reason"] == Q.INVALID_ENCODING:
            assert base64.b64decode(stored) == original, key
        else:  # CRLF files keep the CR, as the bytes were
            assert stored.encode().rstrip(b"\r") == original, key
        assert row["detail"], f"{key}: no detail"


@pytest.mark.timeout(600)
def test_duplicates_and_non_ascii_pass_to_silver_intact(
    corpus_run: tuple[Lake, list[CorpusClass], JobRun],
) -> None:
    lake, _, _ = corpus_run
    events = lake.read_arrow("bronze/events").to_pylist()
    duplicates = sorted(
        (r["item_id"], r["price"]) for r in events if r["event_id"] == "e-dup"
    )
    assert duplicates == [("i1", 12.5), ("i1", 12.5), ("i2", 99.0)]
    by_id = {r["event_id"]: r for r in events}
    assert by_id["e-na-1"]["user_id"] == "ユーザー😀"
    assert by_id["e-na-2"]["user_id"] == 'u\\"q\\\\'
    assert by_id["e-tz"]["ts"].isoformat().startswith(f"{DAY}T10:00:00")


@pytest.mark.timeout(600)
def test_memory_stays_bounded_with_a_10mb_line(
    corpus_run: tuple[Lake, list[CorpusClass], JobRun],
) -> None:
    _, _, run = corpus_run
    assert run.returncode == 0, run.stderr[-4000:]
    assert 0 < run.peak_rss_bytes < MEMORY_BOUND, f"peak RSS {run.peak_rss_bytes / 2**30:.2f} GiB"


@pytest.mark.timeout(300)
def test_truncated_gzip_member_keeps_the_recoverable_lines(
    spark: SparkSession, tmp_path: Path
) -> None:
    cut = truncated_gzip()
    day_dir = tmp_path / "raw" / "events" / f"dt={DAY}"
    day_dir.mkdir(parents=True)
    (day_dir / "00-truncated.jsonl.gz").write_bytes(cut.payload)
    (day_dir / "01-intact.jsonl.gz").write_bytes(gzip.compress(js(event("intact")) + b"\n"))
    lake = Lake(str(tmp_path / "lake"))
    config = FeatureConfig(
        bronze=BronzeConfig(max_line_bytes=MAX_LINE_BYTES, max_quarantined_share=1)
    )
    result = run_bronze(spark, lake, str(tmp_path / "raw"), config, run_id="cut")
    complete = len(cut.recoverable_lines)
    assert (result.events, result.quarantined) == (complete + 1, 1)
    quarantined = lake.read_arrow("bronze/quarantine").to_pylist()
    assert [(r["source_line"], r["reason"]) for r in quarantined] == [
        (complete + 1, Q.TRUNCATED_JSON.value)
    ]
