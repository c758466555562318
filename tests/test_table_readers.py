"""Every reader the README names works on a partitioned table with the pinned stack
(deltalake 1.6.6, pyarrow 14.0.2), and the ones it says fail do fail (so the README is
updated when a pin moves).

The table is written the way the jobs write (``Lake.write_arrow``), partitioned by two
columns, over two commits where the second replaces a partition, with a partition value
that needs escaping in a path.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from mtlrec.lake import Lake

NAME = "gold/examples"
ROWS = {
    # (split, dt) -> values of x
    ("train", "2026-10-01"): [1, 2],
    ("val", "2026-10-02"): [3],
    ("a b:c%", "2026-10-03"): [4],
}
REPLACED = ("val", "2026-10-02")


def _table(rows: dict[tuple[str, str], list[int]]) -> pa.Table:
    flat = [(split, day, x) for (split, day), xs in rows.items() for x in xs]
    return pa.table(
        {
            "x": pa.array([x for *_, x in flat], pa.int64()),
            "when": pa.array([dt.datetime(2026, 10, 1)] * len(flat), pa.timestamp("us")),
            "split": [s for s, _, _ in flat],
            "dt": [d for _, d, _ in flat],
        }
    )


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, str]:
    lake = Lake(str(tmp_path_factory.mktemp("readers") / "lake"))
    lake.write_arrow(_table(ROWS), NAME, mode="overwrite", partition_by=["split", "dt"])
    # Replace one partition: its first file stays on disk but leaves the snapshot.
    lake.write_arrow(
        _table({REPLACED: [30]}),
        NAME,
        mode="overwrite",
        replace_partitions=[{"split": REPLACED[0], "dt": REPLACED[1]}],
    )
    return lake, lake.table_uri(NAME)


EXPECTED = sorted([("train", 1), ("train", 2), ("val", 30), ("a b:c%", 4)])


def _pairs(table: pa.Table) -> list[tuple[str, int]]:
    return sorted(
        zip(table.column("split").to_pylist(), table.column("x").to_pylist(), strict=True)
    )


def test_lake_read_arrow(table_path: tuple[Lake, str]) -> None:
    lake, _ = table_path
    assert _pairs(lake.read_arrow(NAME)) == EXPECTED


@pytest.mark.spark
def test_lake_read_table_on_spark(spark: SparkSession, table_path: tuple[Lake, str]) -> None:
    lake, _ = table_path
    rows = lake.read_table(spark, NAME).collect()
    assert sorted((r["split"], r["x"]) for r in rows) == EXPECTED


def test_delta_rs_file_uris_with_a_pyarrow_dataset(table_path: tuple[Lake, str]) -> None:
    """The README's snippet, verbatim in spirit: snapshot files + hive partitioning."""
    _, path = table_path
    table = DeltaTable(path)
    schema = pa.schema(table.schema().to_arrow())
    parts = [schema.field(c) for c in table.metadata().partition_columns]
    data = ds.dataset(
        table.file_uris(),
        format="parquet",
        partitioning=ds.partitioning(pa.schema(parts), flavor="hive"),
    ).to_table()
    assert _pairs(data) == EXPECTED
    assert set(data.column_names) == {"x", "when", "split", "dt"}


def test_duckdb_read_parquet_over_the_snapshot_files(table_path: tuple[Lake, str]) -> None:
    _, path = table_path
    files = DeltaTable(path).file_uris()
    rows = duckdb.sql(
        f"SELECT split, x FROM read_parquet({files}, hive_partitioning = true)"
    ).fetchall()
    assert sorted(rows) == EXPECTED


def test_delta_rs_own_arrow_export_fails_on_partitioned_tables_with_the_pins(
    table_path: tuple[Lake, str], tmp_path: Path
) -> None:
    """Documented as not working; if a pin moves and this starts passing, fix the README."""
    _, path = table_path
    table = DeltaTable(path)
    for export in (table.to_pyarrow_table, table.to_pandas, table.to_pyarrow_dataset):
        with pytest.raises(TypeError, match="field"):
            export()
    flat = Lake(str(tmp_path / "lake"))
    flat.write_arrow(pa.table({"x": [1, 2]}), "silver/items")
    assert DeltaTable(flat.table_uri("silver/items")).to_pyarrow_table().num_rows == 2
