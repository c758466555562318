"""GoldSnapshot: the spec row of a gold build and the versions it names, resolved once.

Training must read the version of gold/examples that the build's spec row names, not
whatever the table holds when it looks: a build that lands mid-run would otherwise pair
an old spec with new examples.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mtl_model.ray_train import resolve_inputs
from mtl_model.run_config import TrainRunConfig
from mtl_model.synthetic import make_funnel_data
from mtlrec.gold_snapshot import GoldSnapshot, GoldSnapshotError
from mtlrec.lake import Lake
from mtlrec.tables import GOLD_EXAMPLES, GOLD_FEATURE_SPEC, SILVER_EVENTS

SPEC = make_funnel_data(8).spec
CREATED = datetime(2026, 11, 1, tzinfo=UTC)


def _examples(split: str, day: str, rows: int = 64) -> pa.Table:
    return pa.table(
        {
            "row": np.arange(rows),
            "split": [split] * rows,
            "dt": [day] * rows,
        }
    )


def _snapshot(build_id: str, created: datetime, **versions: int | None) -> GoldSnapshot:
    return GoldSnapshot(build_id, SPEC, created, {GOLD_EXAMPLES: 0, **versions})


def test_the_row_round_trips_through_the_table_and_json(lake: Lake) -> None:
    snapshot = GoldSnapshot(
        "b1",
        SPEC,
        CREATED,
        {SILVER_EVENTS: 4, GOLD_EXAMPLES: 7},
        days_written=["2026-10-01"],
        text_fingerprint="abc",
    )
    lake.write_arrow(snapshot.to_arrow(), GOLD_FEATURE_SPEC)
    read = GoldSnapshot.latest(lake)
    assert read == snapshot
    assert GoldSnapshot.from_json(snapshot.to_json()) == snapshot
    assert read is not None and read.version(GOLD_EXAMPLES) == 7


def test_the_newest_build_wins_by_time_then_build_id(lake: Lake) -> None:
    assert GoldSnapshot.latest(lake) is None
    later = CREATED + timedelta(hours=1)
    for snapshot in (
        _snapshot("b-new", later),
        _snapshot("a-old", CREATED),
        _snapshot("a-same-time", later),
    ):
        lake.write_arrow(snapshot.to_arrow(), GOLD_FEATURE_SPEC, mode="append")
    resolved = GoldSnapshot.resolve(lake)
    assert resolved.build_id == "b-new"


def test_no_build_or_no_examples_version_is_an_input_error(lake: Lake) -> None:
    with pytest.raises(GoldSnapshotError, match="no gold build"):
        GoldSnapshot.resolve(lake)
    lake.write_arrow(_snapshot("b1", CREATED, **{}).to_arrow(), GOLD_FEATURE_SPEC)
    broken = GoldSnapshot("b2", SPEC, CREATED + timedelta(1), {GOLD_EXAMPLES: None})
    lake.write_arrow(broken.to_arrow(), GOLD_FEATURE_SPEC, mode="append")
    with pytest.raises(GoldSnapshotError, match="b2 names no version of gold/examples"):
        GoldSnapshot.resolve(lake)


def test_training_reads_the_version_the_snapshot_names(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    for split, day in (("train", "2026-10-01"), ("val", "2026-10-02"), ("test", "2026-10-03")):
        lake.write_arrow(_examples(split, day), GOLD_EXAMPLES, partition_by=["split", "dt"])
    named = lake.version(GOLD_EXAMPLES)
    lake.write_arrow(
        GoldSnapshot("b1", SPEC, CREATED, {GOLD_EXAMPLES: named}).to_arrow(), GOLD_FEATURE_SPEC
    )
    # A later build has written more train days, but its spec row is not there yet.
    lake.write_arrow(
        _examples("train", "2026-10-04"), GOLD_EXAMPLES, partition_by=["split", "dt"]
    )
    assert lake.version(GOLD_EXAMPLES) > named

    inputs = resolve_inputs(lake, GoldSnapshot.resolve(lake), TrainRunConfig())
    pinned = lake.snapshot_files(GOLD_EXAMPLES, version=named, filters=[("split", "=", "train")])
    newest = lake.snapshot_files(GOLD_EXAMPLES, filters=[("split", "=", "train")])
    assert sorted(inputs.files["train"]) == sorted(pinned)
    assert len(newest) > len(pinned)
    assert inputs.snapshot.build_id == "b1"
