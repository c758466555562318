"""Public dumps as a new user gets them, through jobs/build_features.py (issue 17).

- A RetailRocket-shaped ``events.csv`` (header line, epoch ms, no category, no catalog,
  ten days in one folder) runs ``--stage all`` with cluster_configs/retailrocket.yaml as
  shipped; silver's summary line counts attributed and unattributed conversions.
- A Taobao-shaped dump of ten days in one ingest folder: with the default window bronze
  writes everything and exits 1 naming ``features.bronze.window``; with
  ``window=from_data`` every line is an event.
- Gold's day split is checked before the writes it would waste.

The tests write their own logs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from jobs.build_features import main
from mtlrec.lake import Lake
from mtlrec.raw_contract import FormatReason

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RETAILROCKET = ROOT / "cluster_configs" / "retailrocket.yaml"
BEHAVIOR = ROOT / "cluster_configs" / "behavior_csv.yaml"
START = dt.datetime(2015, 6, 2, tzinfo=dt.UTC)
DAYS = 10
HEADER = "timestamp,visitorid,event,itemid,transactionid"


def _ms(day: int, hour: float) -> int:
    return int((START + dt.timedelta(days=day, hours=hour)).timestamp() * 1000)


def retailrocket_lines() -> list[str]:
    """Views every day (so gold has ten days), plus four conversions with known fates."""
    lines = [
        f"{_ms(day, 8 + k)},{user},view,{200 + (user * 7 + k) % 11},"
        for day in range(DAYS)
        for user in range(1, 6)
        for k in range(3)
    ]
    lines += [
        f"{_ms(1, 10)},100,view,500,",
        f"{_ms(1, 11)},100,addtocart,500,",  # 1 h after a view: attributed
        f"{_ms(1, 12)},100,transaction,500,9001",  # 2 h after: attributed
        f"{_ms(2, 10)},101,addtocart,501,",  # never viewed: unattributed
        f"{_ms(3, 10)},102,view,502,",
        f"{_ms(4, 16)},102,transaction,502,9002",  # 30 h after the view: unattributed
    ]
    return lines


class _Summaries(logging.Handler):
    """The ``stage=<name> {json}`` summary lines of one job run."""

    def __init__(self) -> None:
        super().__init__()
        self.stages: dict[str, dict[str, Any]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("stage="):
            name, _, body = message[len("stage=") :].partition(" {")
            self.stages[name] = json.loads("{" + body)


@pytest.fixture(scope="module")
def retailrocket(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Lake, dict[str, dict[str, Any]]]:
    base = tmp_path_factory.mktemp("retailrocket")
    day = base / "raw" / "events" / "dt=2015-09-18"
    day.mkdir(parents=True)
    (day / "events.csv").write_text(HEADER + "\n" + "\n".join(retailrocket_lines()) + "\n")
    summaries = _Summaries()
    logger = logging.getLogger("mtlrec")
    logger.addHandler(summaries)
    try:
        status = main(
            ["--stage", "all", "--config", str(RETAILROCKET),
             "--set", f"lake.root={base / 'lake'}", "--set", f"lake.raw_root={base / 'raw'}"]
        )  # fmt: skip
    finally:
        logger.removeHandler(summaries)
    assert status == 0
    return Lake(str(base / "lake")), summaries.stages


def test_the_header_is_accounted_for_and_every_other_line_is_an_event(
    retailrocket: tuple[Lake, dict[str, dict[str, Any]]],
) -> None:
    lake, stages = retailrocket
    quarantine = lake.read_arrow("bronze/quarantine").to_pylist()
    assert [(r["source_line"], r["reason"]) for r in quarantine] == [
        (1, FormatReason.CSV_HEADER.value)
    ]
    assert quarantine[0]["raw_line"] == HEADER
    assert lake.read_arrow("bronze/events").num_rows == len(retailrocket_lines())
    assert stages["bronze"]["rows_in"] == len(retailrocket_lines()) + 1
    days = {r["dt"] for r in lake.read_arrow("bronze/events", columns=["dt"]).to_pylist()}
    assert len(days) == DAYS, "event days come from the data (window: from_data)"


def test_items_without_a_category_get_unknown_and_gold_is_built(
    retailrocket: tuple[Lake, dict[str, dict[str, Any]]],
) -> None:
    lake, _ = retailrocket
    items = lake.read_arrow("silver/items").to_pylist()
    assert items and {r["category_l1"] for r in items} == {"unknown"}
    splits = {r["split"] for r in lake.read_arrow("gold/examples", columns=["split"]).to_pylist()}
    assert splits == {"train", "val", "test"}


def test_silver_counts_attributed_and_unattributed_conversions(
    retailrocket: tuple[Lake, dict[str, dict[str, Any]]],
) -> None:
    lake, stages = retailrocket
    assert stages["silver"]["conversions"] == {
        "add_to_cart": {"attributed": 1, "unattributed": 1},
        "purchase": {"attributed": 1, "unattributed": 1},
    }
    assert stages["silver"]["attribution_window_hours"] == 24
    examples = lake.read_arrow("gold/examples").to_pylist()
    carted = [r for r in examples if r["label_add_to_cart"] == 1]
    bought = [r for r in examples if r["label_purchase"] == 1]
    assert {r["user_id"] for r in carted} == {"100"} and {r["user_id"] for r in bought} == {"100"}


def _taobao_dump(root: Path) -> int:
    """Ten days of UserBehavior lines in one ingest folder; returns the line count."""
    first = int(dt.datetime(2017, 11, 25, tzinfo=dt.UTC).timestamp())
    lines = [
        f"{1 + i % 7},{100 + i % 13},{5 + i % 3},{('pv', 'cart', 'buy', 'fav')[i % 4]},"
        f"{first + i * DAYS * 86400 // 400}"
        for i in range(400)
    ]
    day = root / "events" / "dt=2017-11-25"
    day.mkdir(parents=True)
    (day / "UserBehavior.csv").write_text("\n".join(lines) + "\n")
    return len(lines)


def test_a_dump_in_one_folder_exits_1_naming_the_window_then_ingests_with_from_data(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = _taobao_dump(tmp_path / "raw")
    common = ["--stage", "bronze", "--config", str(BEHAVIOR),
              "--set", f"lake.root={tmp_path / 'lake'}",
              "--set", f"lake.raw_root={tmp_path / 'raw'}"]  # fmt: skip
    assert main(common) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("build_features: bronze quarantined ")
    assert "timestamp_out_of_window" in message and "features.bronze.window" in message
    lake = Lake(str(tmp_path / "lake"))
    written = (
        lake.read_arrow("bronze/events").num_rows + lake.read_arrow("bronze/quarantine").num_rows
    )
    assert written == total, "nothing is lost when the guard fails"

    assert main([*common, "--set", "features.bronze.window=from_data"]) == 0
    assert lake.read_arrow("bronze/events").num_rows == total
    assert lake.read_arrow("bronze/quarantine").num_rows == 0


def _one_day_json_log(root: Path) -> None:
    day = root / "events" / "dt=2026-10-01"
    day.mkdir(parents=True)
    event = {"event_id": "e1", "ts": "2026-10-01T10:00:00Z", "user_id": "u1",
             "event_type": "impression", "item_id": "i1", "request_id": "r1"}  # fmt: skip
    (day / "part.jsonl").write_text(json.dumps(event) + "\n")


def test_gold_days_outside_the_event_window_exit_2_before_anything_is_written(
    tmp_path: Path,
) -> None:
    _one_day_json_log(tmp_path / "raw")
    argv = ["--stage", "all", "--set", f"lake.root={tmp_path / 'lake'}",
            "--set", f"lake.raw_root={tmp_path / 'raw'}",
            "--set", "features.gold.splits.train_days=[2027-01-01]",
            "--set", "features.gold.splits.val_days=[2027-01-02]",
            "--set", "features.gold.splits.test_days=[2027-01-03]"]  # fmt: skip
    assert main(argv) == 2
    assert not (tmp_path / "lake").exists()


def test_too_few_event_days_for_gold_stop_after_bronze_with_exit_1(
    spark: SparkSession, tmp_path: Path
) -> None:
    _one_day_json_log(tmp_path / "raw")
    argv = ["--stage", "all", "--set", f"lake.root={tmp_path / 'lake'}",
            "--set", f"lake.raw_root={tmp_path / 'raw'}"]  # fmt: skip
    assert main(argv) == 1
    lake = Lake(str(tmp_path / "lake"))
    assert lake.exists("bronze/events") and not lake.exists("silver/events")
