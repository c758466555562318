"""The streaming line reader bronze uses for every raw file (feature_engineering.raw_input)."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from feature_engineering.raw_input import (
    ISSUE_CUT,
    ISSUE_NOT_GZIP,
    RawFile,
    plan_reads,
    read_lines,
    read_pieces,
)

LINES = [f'{{"event_id": "e{i}", "note": "{i:06d}"}}'.encode() for i in range(2000)]
BODY = b"\n".join(LINES) + b"\n"


NO_CAP = 1 << 40


def read(data: bytes, chunk: int = 1 << 20) -> list[tuple[bytes, str | None]]:
    """A gzip file's lines as (bytes, why the file ends here, or None), fed in chunks."""
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    lines = []
    for value, length, issue, detail in read_lines(chunks, gzipped=True, max_line_bytes=NO_CAP):
        assert length == len(value)
        assert (issue == ISSUE_CUT) == (detail is not None)
        lines.append((value, detail))
    return lines


def test_concatenated_members_read_as_one_file() -> None:
    half = len(BODY) // 2
    cut = BODY.index(b"\n", half) + 1
    data = gzip.compress(BODY[:cut]) + gzip.compress(BODY[cut:])
    assert read(data) == [(line, None) for line in LINES]
    assert read(data, chunk=7) == [(line, None) for line in LINES], "member boundary mid-chunk"


def test_a_line_split_across_members_is_one_line() -> None:
    data = gzip.compress(b"ab") + gzip.compress(b"cd\nef")
    assert read(data) == [(b"abcd", None), (b"ef", None)]


def test_blank_lines_crlf_and_trailing_zero_padding_are_kept_like_the_text_source() -> None:
    data = gzip.compress(b"a\r\n\nb\n") + b"\x00" * 512
    assert read(data) == [(b"a\r", None), (b"", None), (b"b", None)]


def test_an_empty_file_has_no_lines() -> None:
    assert read(b"") == []
    assert read(gzip.compress(b"")) == []


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9])
def test_a_cut_stream_keeps_every_complete_line_and_marks_the_tail(keep: float) -> None:
    whole = gzip.compress(BODY)
    cut = whole[: int(len(whole) * keep)]
    recovered = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(cut)
    complete, _, tail = recovered.rpartition(b"\n")
    got = read(cut)
    assert got[:-1] == [(line, None) for line in complete.split(b"\n")]
    assert got[-1][0] == tail
    assert got[-1][1] is not None and "cut short" in got[-1][1]


def test_a_cut_after_the_last_newline_still_reports_the_cut() -> None:
    whole = gzip.compress(BODY)
    got = read(whole[:-4])  # only the trailer's size field is missing
    assert got[:-1] == [(line, None) for line in LINES]
    assert got[-1][0] == b"" and "cut short" in str(got[-1][1])


def test_garbage_after_a_member_ends_the_file_with_a_reason() -> None:
    got = read(gzip.compress(b"a\nb") + b"not gzip at all")
    assert got[:-1] == [(b"a", None)]
    assert got[-1][0] == b"b" and "not a gzip member" in str(got[-1][1])


def test_corrupt_deflate_data_ends_the_file_with_a_reason() -> None:
    whole = bytearray(gzip.compress(BODY))
    whole[len(whole) // 2 : len(whole) // 2 + 64] = b"\xff" * 64
    got = read(bytes(whole))
    assert all(cut is None for _, cut in got[:-1])
    assert got[-1][1] is not None
    assert [line for line, _ in got[:-1]] == LINES[: len(got) - 1]


def test_a_highly_compressed_member_is_decoded_in_bounded_steps() -> None:
    big = b"x" * (50 << 20) + b"\nend\n"
    got = read(gzip.compress(big, compresslevel=1))
    assert [len(line) for line, _ in got] == [50 << 20, 3]


def test_a_cut_stream_fed_in_small_chunks_reports_the_same_cut() -> None:
    whole = gzip.compress(BODY)
    cut = whole[: len(whole) // 2]
    assert read(cut, chunk=13) == read(cut)


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_a_long_line_is_cut_while_it_streams_and_keeps_its_length(chunk: int) -> None:
    data = b"short\n" + b"y" * 100 + b"\n" + b"z" * 30
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    got = list(read_lines(pieces, gzipped=False, max_line_bytes=10))
    assert got == [
        (b"short", 5, None, None),
        (b"y" * 10, 100, None, None),
        (b"z" * 10, 30, None, None),
    ]


def test_a_gzip_bomb_line_is_cut_and_never_held_whole() -> None:
    """64 MiB of one line inflate from ~64 KiB; the reader keeps max_line_bytes of it."""
    bomb = gzip.compress(b"x" * (64 << 20) + b"\nafter\n")
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        got = list(read_lines([bomb], gzipped=True, max_line_bytes=64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [(b"x" * 64, 64 << 20, None, None), (b"after", 5, None, None)]
    assert peak < 8 << 20, f"peak {peak} bytes: the line was held, not streamed"


def test_a_gz_file_that_is_not_gzip_keeps_its_lines_as_stored() -> None:
    got = list(read_lines([b"a\nbb\n", b"ccc"], gzipped=True, max_line_bytes=NO_CAP))
    assert [(value, length, issue) for value, length, issue, _ in got] == [
        (b"a", 1, ISSUE_NOT_GZIP),
        (b"bb", 2, ISSUE_NOT_GZIP),
        (b"ccc", 3, ISSUE_NOT_GZIP),
    ]
    assert all("not gzip" in str(detail) for *_, detail in got)


def test_plain_lines_match_wc_l_numbering() -> None:
    data = b"a\r\n\nb"
    got = list(read_lines([data], gzipped=False, max_line_bytes=NO_CAP))
    assert [v for v, *_ in got] == [b"a\r", b"", b"b"]
    assert list(read_lines([b""], gzipped=False, max_line_bytes=NO_CAP)) == []


# ------------------------------------------------------------------ pieces of a large file
PIECE_FILES = {
    "trailing_newline.jsonl": b"a\nbb\n\nccc\n" + b"d" * 40 + b"\nee\n",
    "no_trailing_newline.jsonl": b"\n\nxyz\n" + b"long" * 20 + b"\nlast",
    "only_newlines.jsonl": b"\n" * 9,
    "one_line.jsonl": b"q" * 33,
    "empty.jsonl": b"",
    "whole.jsonl.gz": gzip.compress(b"g1\ng2\n\ng3"),
}


@pytest.mark.spark
@pytest.mark.parametrize("split_bytes", [1, 7])
def test_a_file_read_in_pieces_gives_every_line_once_with_its_number(
    spark: SparkSession, tmp_path: Path, split_bytes: int
) -> None:
    """Every cut point lands somewhere: before, on and after newlines, inside long lines."""
    files = []
    for name, data in PIECE_FILES.items():
        (tmp_path / name).write_bytes(data)
        path = str(tmp_path / name)
        files.append(RawFile(path, os.fsencode(path), "2026-10-01"))
    expected = {}
    for file in files:
        data = Path(file.source_file).read_bytes()
        gzipped = file.source_file.endswith(".gz")
        lines = read_lines([data], gzipped=gzipped, max_line_bytes=10)
        for number, (value, length, _, _) in enumerate(lines, start=1):
            expected[(file.source_file, number)] = (value, length)
    key = "spark.sql.files.maxPartitionBytes"
    previous = spark.conf.get(key)
    spark.conf.set(key, str(split_bytes))
    try:
        plan = plan_reads(spark, files, max_line_bytes=10)
        rows = read_pieces(spark, plan.pieces, max_line_bytes=10).collect()
    finally:
        spark.conf.set(key, previous)
    got = {
        (r["source_file"], r["source_line"]): (r["value"].encode(), r["line_bytes"]) for r in rows
    }
    assert len(rows) == len(got), "a line was read twice"
    assert got == expected
    counted = {f.source_file: sum(k[0] == f.source_file for k in expected) for f in files}
    assert plan.lines_per_file == counted
    if split_bytes == 1:
        assert len(plan.pieces) > len(files), "large files were cut into pieces"
