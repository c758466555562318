"""Write one batch to a lake table and SIGKILL this process at a chosen point.

    python tests/reliability/crash_driver.py LAKE_ROOT POINT

The write is the one every job makes: ``Lake.write_arrow`` of rows for two day
partitions, overwriting exactly those partitions (``replace_partitions="written"``),
so the commit both adds and removes files. ``POINT`` picks where the process dies;
the hooks wrap the library calls the write goes through, so each point is reached
deterministically:

- ``before_write``: the data is ready, no file is written yet;
- ``mid_write``: the first Parquet file is complete, the other may be partly written;
- ``partial_file``: a Parquet file is half on disk (its footer never written);
- ``before_commit``: every file is written and its stats read, the add and remove
  actions are built, the delta-rs commit is about to be called;
- ``after_commit``: delta-rs has committed; the process dies before returning;
- ``none``: no kill; the write completes and prints its version.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from deltalake import DeltaTable

import mtlrec.lake as lake_module
from mtlrec.lake import Lake

TABLE = "bronze/crash"
POINTS = ("before_write", "mid_write", "partial_file", "before_commit", "after_commit", "none")
NEW_DAYS = ("2026-10-01", "2026-10-03")


def batch(tag: str, days: tuple[str, ...], rows_per_day: int = 2000) -> pa.Table:
    """Rows ``0..n`` per day, each carrying ``tag`` so a version's origin is visible."""
    ids = [i for _ in days for i in range(rows_per_day)]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "tag": pa.array([tag] * len(ids)),
            "value": pa.array([float(i) * 0.5 for i in ids]),
            "dt": pa.array([d for d in days for _ in range(rows_per_day)]),
        }
    )


def die(point: str) -> None:
    print(f"dying at {point}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def install_hooks(point: str) -> None:
    real_write_dataset = pads.write_dataset
    real_commit = DeltaTable.create_write_transaction

    def write_dataset(data: pa.Table, base_dir: str, **kwargs: Any) -> None:
        if point == "before_write":
            die(point)
        if point == "partial_file":
            whole = Path(base_dir) / "dt=2026-10-01" / "part-torn-0.parquet"
            whole.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(data.slice(0, 100), whole)
            size = whole.stat().st_size
            with whole.open("r+b") as handle:
                handle.truncate(size // 2)
            die(point)

        def visitor(written: Any) -> None:
            if point == "mid_write":
                die(point)

        real_write_dataset(data, base_dir, file_visitor=visitor, **kwargs)

    def create_write_transaction(self: DeltaTable, *args: Any, **kwargs: Any) -> Any:
        if point == "before_commit":
            die(point)
        result = real_commit(self, *args, **kwargs)
        if point == "after_commit":
            die(point)
        return result

    lake_module.pads.write_dataset = write_dataset
    DeltaTable.create_write_transaction = create_write_transaction  # type: ignore[method-assign]


def main(root: str, point: str) -> None:
    if point not in POINTS:
        raise SystemExit(f"unknown point {point!r}; expected one of {POINTS}")
    lake = Lake(root, row_group_bytes=16 * 1024)
    data = batch(f"write-{point}", NEW_DAYS)
    install_hooks(point)
    result = lake.write_arrow(data, TABLE, mode="overwrite", replace_partitions="written")
    print(f"committed version {result.version}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
