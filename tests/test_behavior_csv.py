"""The second raw mapping end to end: a behaviour-log CSV through bronze, silver and gold.

Runs jobs/build_features.py (its ``main``) with cluster_configs/behavior_csv.yaml on
tests/data/behavior_csv, a small file of the form
user_id,item_id,category_id,behavior_type,timestamp with a known set of defects.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from jobs.build_features import main
from mtlrec.lake import Lake
from mtlrec.raw_contract import FormatReason
from mtlrec.raw_contract import QuarantineReason as Q

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "tests" / "data" / "behavior_csv"
CONFIG = ROOT / "cluster_configs" / "behavior_csv.yaml"
DAY1 = "dt=2017-11-25/part-00000.csv"
EXPECTED_QUARANTINE = {
    (DAY1, 16): FormatReason.WRONG_FIELD_COUNT,  # "garbage": one field, not five
    (DAY1, 17): FormatReason.WRONG_FIELD_COUNT,  # a sixth field
    (DAY1, 18): FormatReason.WRONG_FIELD_COUNT,  # blank line
    (DAY1, 19): Q.MISSING_FIELD,  # empty user_id
    (DAY1, 20): Q.BAD_TIMESTAMP,
    (DAY1, 21): Q.TIMESTAMP_OUT_OF_WINDOW,  # epoch second 1 = 1970
    (DAY1, 22): Q.UNKNOWN_EVENT_TYPE,  # 'share'
}
LINES = 34
CLICKS = 17  # pv lines that survive dedup (two re-deliveries of one pv line)


@pytest.fixture(scope="module")
def built(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake_root = tmp_path_factory.mktemp("behavior") / "lake"
    common = [
        "--config", str(CONFIG),
        "--set", f"lake.root={lake_root}",
        "--set", f"lake.raw_root={RAW}",
        # 7 of 34 lines are defects by design, above the default 5 % guard.
        "--set", "features.bronze.max_quarantined_share=0.25",
    ]  # fmt: skip
    assert main(["--stage", "bronze", *common]) == 0
    assert main(["--stage", "silver", *common]) == 0
    # Three days: train 11-25, val 11-26, test 11-27. The catalog has no titles, so the
    # text encoder (exercised by the gold tests) is off here.
    assert main(["--stage", "gold", *common, "--set", "features.gold.text.enabled=false"]) == 0
    return Lake(str(lake_root))


def _where(row: dict[str, Any]) -> tuple[str, int]:
    return "/".join(row["source_file"].split("/")[-2:]), row["source_line"]


def test_bronze_reconciles_and_quarantines_each_defect(built: Lake) -> None:
    quarantine = built.read_arrow("bronze/quarantine").to_pylist()
    events = built.read_arrow("bronze/events").to_pylist()
    assert len(quarantine) + len(events) == LINES
    assert {_where(r): r["reason"] for r in quarantine} == EXPECTED_QUARANTINE
    kinds = {r["event_type"] for r in events}
    assert kinds == {"click", "add_to_cart", "purchase", "favorite"}
    assert all(r["event_id"].startswith("h") and r["item_category"] for r in events)


def test_silver_synthesizes_impression_slates_for_clicks(built: Lake) -> None:
    rows = built.read_arrow("silver/events").to_pylist()
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicated lines are one event"
    assert {r["event_type"] for r in rows} == {"impression", "click", "add_to_cart", "purchase"}
    slates: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["event_type"] == "impression":
            slates[row["request_id"]].append(row)
    clicks = [r for r in rows if r["event_type"] == "click"]
    assert len(clicks) == CLICKS and len(slates) == CLICKS
    clicked_in_session = defaultdict(set)
    for click in clicks:
        clicked_in_session[click["session_id"]].add(click["item_id"])
    for click in clicks:
        slate = slates[click["request_id"]]
        assert click["request_id"] == f"r-{click['event_id']}"
        assert len(slate) == 5, "the clicked item plus negatives_per_click=4"
        assert sorted(r["position"] for r in slate) == [1, 2, 3, 4, 5]
        hit = [r for r in slate if r["item_id"] == click["item_id"]]
        assert len(hit) == 1 and hit[0]["position"] == click["position"]
        negatives = {r["item_id"] for r in slate} - {click["item_id"]}
        assert not negatives & clicked_in_session[click["session_id"]]
        assert all(r["session_id"] == click["session_id"] for r in slate)


def test_silver_sessions_catalog_and_counts(built: Lake) -> None:
    rows = built.read_arrow("silver/events").to_pylist()
    real = [r for r in rows if r["event_type"] != "impression"]
    sessions = {(r["user_id"], r["event_ts"].isoformat()[:16]): r["session_id"] for r in real}
    # user 2: 23:50 on day 1 and 00:10 on day 2 are one session across midnight
    assert sessions[("2", "2017-11-25T23:50")] == sessions[("2", "2017-11-26T00:10")]
    # user 1: two hours apart are two sessions
    assert sessions[("1", "2017-11-25T01:00")] != sessions[("1", "2017-11-25T03:00")]
    assert all(r["item_known"] and r["category_l1"] for r in rows)
    assert all(r["market"] is None for r in rows)
    items = built.read_arrow("silver/items").to_pylist()
    assert {r["item_id"]: r["category_l1"] for r in items}["101"] == "10"
    assert len(items) == 12


def test_gold_examples_carry_the_labels_of_the_stages_the_log_has(built: Lake) -> None:
    examples = built.read_arrow("gold/examples").to_pylist()
    assert {row["split"] for row in examples} == {"train", "val", "test"}
    silver = built.read_arrow("silver/events").to_pylist()
    impressions = [e for e in silver if e["event_type"] == "impression"]
    assert len(examples) == len(impressions), "one example per synthesized impression"
    clicks = sum(1 for e in silver if e["event_type"] == "click")
    assert sum(row["label_click"] for row in examples) == clicks
    # user 1 views then carts item 100 on 11-27: that impression is a click and a cart
    carted = [
        r
        for r in examples
        if r["user_id"] == "1"
        and r["item_id"] == "100"
        and r["dt"] == "2017-11-27"
        and r["label_click"] == 1
    ]
    assert carted and all(r["label_add_to_cart"] == 1 for r in carted)
    # purchases follow clicks: a purchase label never stands without its click
    assert all(r["label_click"] == 1 for r in examples if r["label_purchase"] == 1)
    assert sum(r["label_purchase"] for r in examples) >= 1
