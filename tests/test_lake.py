"""Lake I/O against real local Spark and real delta-rs commits (DESIGN.md section 5)."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtlrec.lake import Lake, LakeError, SchemaMismatchError

pytestmark = pytest.mark.spark

DAYS = ["2026-10-01", "2026-10-02", "2026-10-03"]


def _events(spark: SparkSession, rows: int = 3000, offset: int = 0) -> DataFrame:
    return (
        spark.range(offset, offset + rows)
        .withColumn(
            "dt",
            F.element_at(F.array(*[F.lit(d) for d in DAYS]), (F.col("id") % 3 + 1).cast("int")),
        )
        .withColumn("user_id", F.concat(F.lit("u"), (F.col("id") % 97).cast("string")))
        .withColumn("price", F.round(F.rand(seed=3) * 100, 2))
        .withColumn("ts", F.timestamp_seconds(F.lit(1_790_000_000) + F.col("id")))
    )


def _sorted_rows(table: pa.Table) -> list[tuple[object, ...]]:
    """Order-free content, timestamps as UTC epoch microseconds whatever the reader's unit."""
    columns = []
    for name in sorted(table.column_names):
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64())
        columns.append(column.to_pylist())
    return sorted(zip(*columns, strict=True))


def test_spark_write_reads_back_identically_through_delta_rs_duckdb_and_spark(
    spark: SparkSession, lake: Lake
) -> None:
    source = _events(spark)
    result = lake.write_table(source, "bronze/events", partition_by=["dt"])
    assert result.version == 0 and result.rows == 3000 and result.files > 0

    expected = _sorted_rows(pa.Table.from_pandas(source.toPandas(), preserve_index=False))
    through_delta_rs = lake.read_arrow("bronze/events")
    through_spark = lake.read_table(spark, "bronze/events").toPandas()
    files = lake.snapshot_files("bronze/events")
    through_duckdb = duckdb.sql(
        f"select * from read_parquet({[f.removeprefix('file://') for f in files]}, "
        "hive_partitioning=true, hive_types_autocast=false)"
    ).fetch_arrow_table()

    assert _sorted_rows(through_delta_rs) == expected
    assert _sorted_rows(pa.Table.from_pandas(through_spark, preserve_index=False)) == expected
    assert _sorted_rows(through_duckdb.select(through_delta_rs.column_names)) == expected
    # Column statistics are in the log: readers can prune on them.
    actions = pa.table(lake.delta_table("bronze/events").get_add_actions(flatten=True))
    assert sum(actions.column("num_records").to_pylist()) == 3000
    assert all(v is not None and 0 <= v <= 100 for v in actions.column("min.price").to_pylist())


def test_overwriting_one_partition_keeps_the_others(spark: SparkSession, lake: Lake) -> None:
    lake.write_table(_events(spark), "bronze/events", partition_by=["dt"])
    before = set(lake.snapshot_files("bronze/events", filters=[("dt", "=", DAYS[0])]))
    replacement = _events(spark, rows=30, offset=10_000).where(F.col("dt") == DAYS[0])

    lake.write_table(replacement, "bronze/events", mode="overwrite", replace_partitions="written")

    table = lake.read_arrow("bronze/events")
    counts = {d: table.filter(pa.compute.equal(table["dt"], d)).num_rows for d in DAYS}
    assert counts == {DAYS[0]: 10, DAYS[1]: 1000, DAYS[2]: 1000}
    after = set(lake.snapshot_files("bronze/events", filters=[("dt", "=", DAYS[0])]))
    assert not before & after, "replaced files must leave the snapshot"
    # An explicit partition list may also empty a partition the new data does not touch.
    empty = _events(spark, rows=0)
    lake.write_table(empty, "bronze/events", mode="overwrite", replace_partitions=[{"dt": DAYS[1]}])
    assert lake.read_arrow("bronze/events", filters=[("dt", "=", DAYS[1])]).num_rows == 0
    assert lake.read_arrow("bronze/events").num_rows == 1010


def test_same_run_id_commits_once(spark: SparkSession, lake: Lake) -> None:
    first = lake.write_table(_events(spark), "bronze/events", partition_by=["dt"], run_id="job-1")
    again = lake.write_table(_events(spark), "bronze/events", run_id="job-1")
    assert not first.skipped and again.skipped
    assert lake.version("bronze/events") == first.version
    assert lake.read_arrow("bronze/events").num_rows == 3000


def test_append_with_mismatched_schema_fails_clearly(spark: SparkSession, lake: Lake) -> None:
    lake.write_table(_events(spark), "bronze/events", partition_by=["dt"])
    wrong = _events(spark).withColumn("price", F.col("price").cast("string")).drop("ts")
    with pytest.raises(SchemaMismatchError, match=r"missing columns \['ts'\].*price"):
        lake.write_table(wrong, "bronze/events")
    assert lake.version("bronze/events") == 0


def test_table_names_cannot_escape_the_lake(lake: Lake) -> None:
    for bad in ["../etc", "bronze/../../x", "/abs/path", "gold/Ex", "bronze", "platinum/x"]:
        with pytest.raises(LakeError, match="invalid table name"):
            lake.table_uri(bad)


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from mtlrec.config import SparkConfig
    from mtlrec.lake import Lake
    from mtlrec.spark import get_spark
    from pyspark.sql import functions as F
    spark = get_spark(SparkConfig(master="local[1]", shuffle_partitions=1))
    lake = Lake(sys.argv[1], row_group_bytes=64 * 1024)
    df = spark.range(500).withColumn("dt", F.lit("2026-10-01")).withColumn(
        "user_id", F.lit("crash")).withColumn("price", F.lit(1.0)).withColumn(
        "ts", F.timestamp_seconds(F.lit(1_790_000_000)))
    lake.stage_spark_files(df, "bronze/events", ["dt"])
    print("files written, dying before commit", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_between_file_write_and_commit_leaves_previous_version(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    lake.write_table(_events(spark), "bronze/events", partition_by=["dt"])
    before = _sorted_rows(lake.read_arrow("bronze/events"))
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), lake.root], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert "files written" in proc.stdout
    orphans = list(Path(lake.table_uri("bronze/events")).rglob("*.parquet"))
    assert len(orphans) > len(lake.snapshot_files("bronze/events")), "the crash left files"
    assert lake.version("bronze/events") == 0
    assert _sorted_rows(lake.read_arrow("bronze/events")) == before
    assert lake.read_table(spark, "bronze/events").count() == 3000
    # The next run succeeds on top of the debris.
    lake.write_table(_events(spark, rows=3, offset=50_000), "bronze/events")
    assert lake.read_arrow("bronze/events").num_rows == 3003


def _append_arrow(root: str, worker: int) -> None:
    data = pa.table(
        {
            "id": pa.array(range(worker * 100, worker * 100 + 100), pa.int64()),
            "dt": pa.array([DAYS[worker % 3]] * 100),
        }
    )
    Lake(root).write_arrow(data, "silver/concurrent", partition_by=["dt"])


def test_concurrent_appends_both_land(lake: Lake) -> None:
    _append_arrow(lake.root, 0)  # the table exists before the race
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_arrow, args=(lake.root, w)) for w in (1, 2)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    ids = sorted(lake.read_arrow("silver/concurrent").column("id").to_pylist())
    assert ids == list(range(300))
    assert lake.version("silver/concurrent") == 2


def test_a_staged_frame_reads_back_whole_and_its_copy_is_deleted_after_the_block(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    table_dir = tmp_path / "lake" / "bronze" / "events"
    frame = _events(spark, rows=500)
    with lake.staged(frame, "bronze/events", partition_cols=["dt"]) as staged:
        assert [d.name for d in table_dir.iterdir()] != []  # the copy is on the storage
        assert staged.columns == frame.columns
        assert _sorted_rows(staged.toArrow()) == _sorted_rows(frame.toArrow())
        assert staged.where(F.col("dt") == DAYS[0]).count() == 167
    assert list(table_dir.iterdir()) == []
    nothing = frame.where(F.lit(False))
    with (
        pytest.raises(RuntimeError, match="a later write failed"),
        lake.staged(nothing, "bronze/events", ["dt"]) as empty,
    ):
        assert empty.count() == 0
        raise RuntimeError("a later write failed")
    assert list(table_dir.iterdir()) == []
    assert not lake.exists("bronze/events")


def test_columns_without_footer_statistics_still_commit(spark: SparkSession, lake: Lake) -> None:
    """Parquet writers omit min/max for long values; the commit must not need them."""
    long_lines = spark.range(40).withColumn("raw", F.expr("repeat('x', 5000 + id)"))
    result = lake.write_table(long_lines, "bronze/quarantine")
    assert result.rows == 40
    assert lake.read_arrow("bronze/quarantine").num_rows == 40


def test_a_spec_naming_some_partition_columns_replaces_every_matching_partition(
    lake: Lake,
) -> None:
    """Bronze replaces {"ingest_dt": d}: every event day of that ingest day, and the null
    partition of entries that belong to no ingest day."""

    def rows(pairs: list[tuple[str, str | None]]) -> pa.Table:
        return pa.table(
            {
                "x": list(range(len(pairs))),
                "dt": [d for d, _ in pairs],
                "ingest_dt": pa.array([i for _, i in pairs], pa.string()),
            }
        )

    first = [("d1", "i1"), ("d2", "i1"), ("d1", "i2"), ("d3", None)]
    lake.write_arrow(rows(first), "bronze/t", mode="overwrite", partition_by=["dt", "ingest_dt"])
    lake.write_arrow(
        rows([("d9", "i1")]),
        "bronze/t",
        mode="overwrite",
        replace_partitions=[{"ingest_dt": "i1"}, {"ingest_dt": None}],
    )
    left = sorted(
        zip(
            *lake.read_arrow("bronze/t", columns=["dt", "ingest_dt"]).to_pydict().values(),
            strict=True,
        )
    )
    assert left == [("d1", "i2"), ("d9", "i1")]
    with pytest.raises(LakeError, match="outside replace_partitions"):
        lake.write_arrow(
            rows([("d1", "i3")]),
            "bronze/t",
            mode="overwrite",
            replace_partitions=[{"ingest_dt": "i1"}],
        )
