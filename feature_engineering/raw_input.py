"""Find raw day directories and read their lines with file name and line number.

Listing goes through Hadoop's FileSystem (the JVM Spark already has), so the
same code lists a local directory, HDFS or an object store. Lines are read by
Spark's text source with ``\\n`` as the only separator, so line numbers match
``wc -l`` / an editor; the bytes are kept as they are (Spark does not decode
them), which lets bronze test UTF-8 validity exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

_DAY_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


class RawInputError(FileNotFoundError):
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


@dataclass(frozen=True)
class NumberedLines:
    lines: DataFrame
    cached: DataFrame

    def release(self) -> None:
        self.cached.unpersist()


def read_numbered_lines(spark: SparkSession, files: list[str]) -> NumberedLines:
    """``lines`` columns: value (string, raw bytes), source_file, source_line (1-based), ingest_dt.

    ``monotonically_increasing_id`` numbers rows within each Spark partition in
    file order; a file split (``file_block_start``) is contiguous in one
    partition, so a line's number is its offset inside its split plus the
    lines of the earlier splits of the same file. Only one row per split is
    aggregated; nothing reaches the driver. The result is persisted so the ids
    are computed once; the caller calls ``release()`` when done.
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
        F.regexp_extract("source_file", r"/dt=(\d{4}-\d{2}-\d{2})/", 1).alias("ingest_dt"),
    )
    return NumberedLines(lines, raw)
