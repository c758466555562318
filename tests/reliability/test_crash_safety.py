"""Crash safety: a writer SIGKILLed anywhere leaves the table whole, and the next run succeeds.

``crash_driver.py`` overwrites two day partitions of a table and kills itself at one
of five points around the file writes and the delta-rs commit. After each kill the
table is at its previous version with identical content (or, killed after the
commit, at the next version with exactly the new content: never in between); the
next run succeeds; and no file a commit removed, nor any debris of the killed
write, is ever read — every such file is garbled and all readers still return the
right rows.

The kill of a real job process at a random (seeded) moment is in
``test_idempotency.py``, where the killed run's neighbours give the expected content.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from mtlrec.lake import Lake
from reliability.crash_driver import NEW_DAYS, TABLE, batch
from reliability.harness import ROOT, job_env, table_fingerprint

DRIVER = Path(__file__).with_name("crash_driver.py")
KILL_POINTS = ("before_write", "mid_write", "partial_file", "before_commit", "after_commit")
OLD_DAYS = ("2026-10-01", "2026-10-02")


def _lake(root: Path) -> Lake:
    return Lake(str(root), row_group_bytes=16 * 1024)


def _base_table(root: Path) -> Lake:
    """Version 1 of the table: two days, one of them already overwritten once."""
    lake = _lake(root)
    lake.write_arrow(batch("v0", OLD_DAYS), TABLE, partition_by=["dt"])
    lake.write_arrow(
        batch("v1", OLD_DAYS[:1]), TABLE, mode="overwrite", replace_partitions="written"
    )
    return lake


def _drive(root: Path, point: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DRIVER), str(root), point],
        cwd=ROOT,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )


def _rows(table: pa.Table) -> list[tuple[object, ...]]:
    columns = sorted(table.column_names)
    return sorted(tuple(row[c] for c in columns) for row in table.to_pylist())


def _expected_after_write(tag: str) -> list[tuple[object, ...]]:
    kept = batch("v0", OLD_DAYS[1:])
    written = batch(tag, NEW_DAYS)
    return _rows(pa.concat_tables([kept, written]))


def _garble_unreferenced(lake: Lake) -> int:
    """Overwrite every Parquet file the snapshot does not reference; returns how many."""
    referenced = {Path(uri.removeprefix("file://")) for uri in lake.snapshot_files(TABLE)}
    garbled = 0
    for path in Path(lake.table_uri(TABLE)).rglob("*.parquet"):
        if path not in referenced:
            path.write_bytes(b"GARBLED: a removed or uncommitted file was read\n" * 10)
            garbled += 1
    return garbled


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_leaves_the_previous_or_the_next_version_whole(point: str, tmp_path: Path) -> None:
    lake = _base_table(tmp_path / "lake")
    version = lake.version(TABLE)
    before = table_fingerprint(lake, TABLE)
    before_files = set(lake.snapshot_files(TABLE))

    killed = _drive(tmp_path / "lake", point)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert f"dying at {point}" in killed.stdout

    lake = _lake(tmp_path / "lake")
    if point == "after_commit":
        assert lake.version(TABLE) == version + 1
        assert _rows(lake.read_arrow(TABLE)) == _expected_after_write(f"write-{point}")
    else:
        assert lake.version(TABLE) == version
        assert table_fingerprint(lake, TABLE) == before
        assert set(lake.snapshot_files(TABLE)) == before_files

    rerun = _drive(tmp_path / "lake", "none")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    committed = version + (2 if point == "after_commit" else 1)
    assert f"committed version {committed}" in rerun.stdout
    expected = _expected_after_write("write-none")
    assert _rows(lake.read_arrow(TABLE)) == expected

    assert _garble_unreferenced(lake) >= 1, "the history left removed files to garble"
    assert _rows(lake.read_arrow(TABLE)) == expected
    assert lake.read_arrow(TABLE, version=committed).num_rows == len(expected)


@pytest.mark.spark
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::FutureWarning")  # Petastorm 0.13 on pyarrow 14
def test_spark_and_petastorm_readers_never_open_removed_or_orphaned_files(
    spark: SparkSession, tmp_path: Path
) -> None:
    from petastorm import make_batch_reader

    lake = _base_table(tmp_path / "lake")
    killed = _drive(tmp_path / "lake", "before_commit")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _garble_unreferenced(lake) >= 2  # v0's removed day and the killed write's files
    expected = _rows(lake.read_arrow(TABLE))

    frame = lake.read_table(spark, TABLE).toPandas()
    assert _rows(pa.Table.from_pandas(frame, preserve_index=False)) == expected

    rows = 0
    with make_batch_reader(lake.snapshot_files(TABLE), reader_pool_type="dummy") as reader:
        for chunk in reader:
            rows += len(chunk.id)
    assert rows == len(expected)
