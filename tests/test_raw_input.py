"""The gzip line reader bronze uses for ``.gz`` files (feature_engineering.raw_input)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from feature_engineering.raw_input import gzip_lines

LINES = [f'{{"event_id": "e{i}", "note": "{i:06d}"}}'.encode() for i in range(2000)]
BODY = b"\n".join(LINES) + b"\n"


def read(data: bytes) -> list[tuple[bytes, str | None]]:
    return list(gzip_lines(data))


def test_concatenated_members_read_as_one_file() -> None:
    half = len(BODY) // 2
    cut = BODY.index(b"\n", half) + 1
    data = gzip.compress(BODY[:cut]) + gzip.compress(BODY[cut:])
    assert read(data) == [(line, None) for line in LINES]


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
