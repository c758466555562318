"""Find raw day directories and read their lines with file name and line number.

Listing goes through Hadoop's FileSystem (the JVM Spark already has), so the
same code lists a local directory, HDFS or an object store. Lines are read by
Spark's text source with ``\\n`` as the only separator, so line numbers match
``wc -l`` / an editor; the bytes are kept as they are (Spark does not decode
them), which lets bronze test UTF-8 validity exactly.

Gzip files are read by our own decompressor instead (``gzip_lines``): Hadoop's
codec fails the whole job on a stream cut short, while a shipper that died
mid-upload leaves exactly that. Ours keeps every complete line, decodes
concatenated members, and hands over the cut tail as one line marked
``cut_detail`` so bronze quarantines it. A gzip file is not splittable anyway,
so one task per file loses no parallelism; the task holds the compressed file
in memory (Spark's ``binaryFile`` source), so keep gzip files under a few
hundred MB, as log shippers do.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from mtlrec.errors import InputError

_DAY_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_CHUNK = 1 << 20
_GZIP_BATCH_LINES = 8192
GZIP_LINES_SCHEMA = pa.schema(
    [
        ("value", pa.binary()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("cut_detail", pa.string()),
    ]
)


class RawInputError(InputError, FileNotFoundError):
    """Raw input that is absent or unusable; the message names the path."""


@dataclass(frozen=True)
class RawDay:
    day: str
    files: list[str]


def spark_path(path: str) -> str:
    """Local paths become absolute file URIs; URIs pass through."""
    return path if "://" in path else Path(path).resolve().as_uri()


def glob_paths(spark: SparkSession, pattern: str) -> list[str]:
    """Paths matching a Hadoop glob (local, HDFS or object store), sorted."""
    jvm = spark.sparkContext._jvm
    jsc = spark.sparkContext._jsc
    assert jvm is not None and jsc is not None
    hpath = jvm.org.apache.hadoop.fs.Path(pattern)
    fs = hpath.getFileSystem(jsc.hadoopConfiguration())
    statuses = fs.globStatus(hpath) or []
    return sorted(str(status.getPath().toString()) for status in statuses)


def list_days(
    spark: SparkSession, events_root: str, file_glob: str, days: list[str] | None
) -> list[RawDay]:
    """The day directories to ingest (all, or exactly ``days``) with their files."""
    root = spark_path(events_root)
    if not glob_paths(spark, root):
        raise RawInputError(f"raw events directory not found: {events_root}")
    if days is None:
        found = [p.rstrip("/").rsplit("/", 1)[-1] for p in glob_paths(spark, f"{root}/dt=*")]
        days = sorted(m.group(1) for name in found if (m := _DAY_DIR.match(name)))
        if not days:
            raise RawInputError(f"no dt=YYYY-MM-DD directories under {events_root}")
    result = []
    for day in sorted(set(days)):
        day_dir = f"{root}/dt={day}"
        if not glob_paths(spark, day_dir):
            raise RawInputError(f"raw events directory not found: {events_root}/dt={day}")
        result.append(RawDay(day, glob_paths(spark, f"{day_dir}/{file_glob}")))
    if not any(d.files for d in result):
        raise RawInputError(f"no files matching {file_glob!r} under {events_root} for {days}")
    return result


def gzip_lines(data: bytes) -> Iterator[tuple[bytes, str | None]]:
    """Each ``\\n``-separated line of a gzip file as (bytes, None), member after member.

    A stream that is cut short or corrupt ends with one more item: the bytes after the
    last complete line (possibly empty) and why the file ends there. Trailing zero
    padding after the last member is ignored, as gzip(1) does.
    """
    pending = bytearray()
    offset = 0
    while offset < len(data):
        if data[offset : offset + 2] != _GZIP_MAGIC:
            if data.count(0, offset) == len(data) - offset:
                break
            yield bytes(pending), f"not a gzip member at byte {offset}; the rest is unreadable"
            return
        member = zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            while not member.eof and (member.unconsumed_tail or offset < len(data)):
                feed = member.unconsumed_tail
                if not feed:
                    feed = data[offset : offset + _GZIP_CHUNK]
                    offset += len(feed)
                # Output is capped per call so a highly compressed member cannot balloon.
                out = member.decompress(feed, _GZIP_CHUNK)
                last_newline = out.rfind(b"\n")
                if last_newline < 0:  # a long line: append, never re-scan what is pending
                    pending += out
                    continue
                pending += out[:last_newline]
                for line in pending.split(b"\n"):
                    yield bytes(line), None
                pending = bytearray(out[last_newline + 1 :])
        except zlib.error as exc:
            yield bytes(pending), f"gzip data corrupt near byte {offset}: {exc}"
            return
        offset -= len(member.unused_data)
        if not member.eof:
            yield bytes(pending), f"gzip stream cut short after {len(data)} bytes"
            return
    if pending:
        yield bytes(pending), None


def _numbered_gzip_lines(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: binaryFile rows (path, content) to numbered lines."""
    columns: dict[str, list[object]] = {name: [] for name in GZIP_LINES_SCHEMA.names}

    def flush() -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pydict(columns, schema=GZIP_LINES_SCHEMA)
        for values in columns.values():
            values.clear()
        return batch

    for batch in batches:
        for path, content in zip(
            batch.column("path").to_pylist(), batch.column("content").to_pylist(), strict=True
        ):
            for number, (line, cut) in enumerate(gzip_lines(content), start=1):
                columns["value"].append(line)
                columns["source_file"].append(path)
                columns["source_line"].append(number)
                columns["cut_detail"].append(cut)
                if len(columns["value"]) >= _GZIP_BATCH_LINES:
                    yield flush()
    if columns["value"]:
        yield flush()


def _read_gzip_lines(spark: SparkSession, files: list[str]) -> DataFrame:
    return (
        spark.read.format("binaryFile")
        .load(files)
        .select("path", "content")
        .mapInArrow(_numbered_gzip_lines, from_arrow_schema(GZIP_LINES_SCHEMA))
        # A binary-to-string cast keeps the bytes as they are, like the text source.
        .withColumn("value", F.col("value").cast("string"))
    )


@dataclass(frozen=True)
class NumberedLines:
    lines: DataFrame
    cached: DataFrame | None

    def release(self) -> None:
        if self.cached is not None:
            self.cached.unpersist()


def _read_text_lines(spark: SparkSession, files: list[str]) -> tuple[DataFrame, DataFrame]:
    """Plain (or Hadoop-codec) files: numbered lines and the persisted frame behind them.

    ``monotonically_increasing_id`` numbers rows within each Spark partition in
    file order; a file split (``file_block_start``) is contiguous in one
    partition, so a line's number is its offset inside its split plus the
    lines of the earlier splits of the same file. Only one row per split is
    aggregated; nothing reaches the driver. The scan is persisted so the ids
    are computed once.
    """
    raw = (
        spark.read.option("lineSep", "\n")
        .text(files)
        .select(
            "value",
            F.col("_metadata.file_path").alias("source_file"),
            F.col("_metadata.file_block_start").alias("block_start"),
            F.monotonically_increasing_id().alias("row_id"),
        )
        .persist()
    )
    earlier = (
        Window.partitionBy("source_file")
        .orderBy("block_start")
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    splits = (
        raw.groupBy("source_file", "block_start")
        .agg(F.count(F.lit(1)).alias("n"), F.min("row_id").alias("first_row"))
        .withColumn("offset", F.coalesce(F.sum("n").over(earlier), F.lit(0)))
        .drop("n")
    )
    lines = raw.join(F.broadcast(splits), ["source_file", "block_start"]).select(
        "value",
        "source_file",
        (F.col("offset") + F.col("row_id") - F.col("first_row") + 1).alias("source_line"),
        F.lit(None).cast("string").alias("cut_detail"),
    )
    return lines, raw


def read_numbered_lines(spark: SparkSession, files: list[str]) -> NumberedLines:
    """``lines`` columns: value (string, raw bytes), source_file, source_line (1-based),
    cut_detail (why a gzip file ends at this line, else null), ingest_dt.

    The caller calls ``release()`` when done with ``lines``.
    """
    gzipped = [f for f in files if f.endswith(".gz")]
    plain = [f for f in files if not f.endswith(".gz")]
    parts: list[DataFrame] = []
    cached = None
    if plain:
        text_lines, cached = _read_text_lines(spark, plain)
        parts.append(text_lines)
    if gzipped:
        parts.append(_read_gzip_lines(spark, gzipped))
    lines = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    lines = lines.withColumn(
        "ingest_dt", F.regexp_extract("source_file", r"/dt=(\d{4}-\d{2}-\d{2})/", 1)
    )
    return NumberedLines(lines, cached)
