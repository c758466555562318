"""Batch scoring end to end on a tiny generated log: the real feature jobs, a real model,
local Spark, the Delta table it writes, and the model's own forward pass as reference."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring_pipeline import Pipeline, ScoringRun, pipeline, run_job, score_test_day

from feature_engineering.candidates import (
    CATEGORY,
    POPULAR,
    RECENT,
    CandidateError,
    candidates,
    days_before,
    eligible_items,
    popular_items,
)
from feature_engineering.gold import build_examples_for
from jobs.score_users import main as score_users
from mtl_model.artifact import load_artifact
from mtl_model.scoring import feature_columns
from mtl_model.scoring_config import CandidateConfig
from mtl_model.streaming import to_tensors
from mtlrec.lake import PartitionFilter

pytestmark = [pytest.mark.spark, pytest.mark.slow]
TABLE = "gold/recommendations"


@pytest.fixture(scope="module")
def built(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return pipeline(tmp_path_factory.mktemp("scoring"))


@pytest.fixture(scope="module")
def scored(built: Pipeline) -> ScoringRun:
    return score_test_day(built)


def _partition(built: Pipeline, day: str, version: str) -> pd.DataFrame:
    return built.lake.read_arrow(
        TABLE, filters=[("scored_dt", "=", day), ("model_version", "=", version)]
    ).to_pandas()


def _silver(built: Pipeline, table: str, days: list[str] | None = None) -> pd.DataFrame:
    filters: list[PartitionFilter] | None = [("dt", "in", days)] if days is not None else None
    return built.lake.read_arrow(table, filters=filters).to_pandas()


def test_writes_top_k_ranked_rows_for_every_active_user(
    built: Pipeline, scored: ScoringRun
) -> None:
    assert scored.exit_code == 0
    cfg = built.cfg.score
    recs = _partition(built, scored.day, scored.model_version)
    active = _silver(built, "silver/events", days_before(scored.day, cfg.active_days))
    assert set(recs["user_id"]) == set(active["user_id"])
    assert len(recs) == recs["user_id"].nunique() * cfg.top_k
    for _, group in recs.groupby("user_id"):
        assert sorted(group["rank"]) == list(range(1, cfg.top_k + 1))
        assert group["item_id"].is_unique
        ordered = group.sort_values("rank")["final_score"].to_numpy()
        assert (np.diff(ordered) <= 0).all()
    for task in built.spec.tasks:
        column = recs[f"score_{task.name}"]
        assert column.notna().all()
        if task.type == "binary":
            assert column.between(0.0, 1.0).all(), task.name
    # The default final score is the expected revenue p(purchase) x price.
    prices = _silver(built, "silver/items").set_index("item_id")["price"]
    expected = recs["score_purchase"] * recs["item_id"].map(prices).clip(lower=0).fillna(0)
    np.testing.assert_allclose(recs["final_score"], expected, rtol=1e-12)
    assert (recs["model_version"] == scored.model_version).all()
    assert (recs["scored_dt"] == scored.day).all()
    assert recs["scored_at"].nunique() == 1
    assert scored.model_version == hashlib.sha256(built.model().read_bytes()).hexdigest()[:12]
    assert built.lake.table_uri(TABLE) in scored.last_line
    assert f"scored_dt={scored.day}" in scored.last_line


def test_rerun_replaces_its_partition(built: Pipeline, scored: ScoringRun) -> None:
    before = _partition(built, scored.day, scored.model_version)
    version = built.lake.version(TABLE)
    code, _ = run_job(
        score_users, ["--model", str(built.model()), "--date", scored.day, *built.cli()]
    )
    assert code == 0
    assert built.lake.version(TABLE) > version
    after = _partition(built, scored.day, scored.model_version)
    assert len(after) == len(before)
    key = ["user_id", "rank"]
    pd.testing.assert_frame_equal(
        after.sort_values(key).reset_index(drop=True).drop(columns="scored_at"),
        before.sort_values(key).reset_index(drop=True).drop(columns="scored_at"),
    )


def test_scores_equal_the_models_forward_pass_on_features_of_that_day(
    built: Pipeline, scored: ScoringRun, spark: SparkSession
) -> None:
    recs = _partition(built, scored.day, scored.model_version)
    sample = recs.sample(n=min(25, len(recs)), random_state=3)
    context = built.cfg.score.context
    users = _silver(built, "silver/users").set_index("user_id")["region"]
    pairs = spark.createDataFrame(
        pd.DataFrame(
            {
                "user_id": sample["user_id"],
                "item_id": sample["item_id"],
                "page": context.page,
                "device": context.device,
                "position": context.position,
                "market": sample["user_id"].map(users),
            }
        ),
        "user_id string, item_id string, page string, device string, position int, market string",
    ).withColumn("event_ts", F.lit(None).cast("timestamp"))
    assert context.hour_utc is None  # event_ts stays null, as the job leaves it
    features = build_examples_for(spark, built.lake, built.cfg.features.gold, pairs, scored.day)
    frame = features.toPandas().merge(sample, on=["user_id", "item_id"])
    assert len(frame) == len(sample)
    artifact = load_artifact(built.model())
    columns = feature_columns(artifact.spec)
    batch = to_tensors({c: frame[c].to_numpy() for c in columns.names()}, columns)
    with torch.no_grad():
        direct = artifact.build().predict(batch)  # type: ignore[arg-type]
    for task in artifact.spec.tasks:
        np.testing.assert_allclose(
            frame[f"score_{task.name}"].to_numpy(),
            direct[task.name].double().numpy(),
            rtol=1e-5,
            atol=1e-7,
            err_msg=task.name,
        )


def test_a_users_file_scores_exactly_those_users(
    built: Pipeline, scored: ScoringRun, tmp_path: Path
) -> None:
    known = sorted(_silver(built, "silver/users")["user_id"])[:2]
    listing = tmp_path / "users.txt"
    listing.write_text(f"# users to score\n{known[0]}\n\n  {known[1]}  \nnobody-knows-me\n")
    code, last = run_job(
        score_users,
        [
            "--model", str(built.model()), "--date", scored.day, "--users", str(listing),
            *built.cli(), "--set", "score.model_version=listed",
        ],
    )  # fmt: skip
    assert code == 0, last
    recs = _partition(built, scored.day, "listed")
    assert sorted(recs["user_id"].unique()) == sorted([*known, "nobody-knows-me"])
    assert len(recs) == 3 * built.cfg.score.top_k
    # The other model version's partition is untouched.
    assert len(_partition(built, scored.day, scored.model_version)) > 0


def test_bad_inputs_exit_2_and_write_nothing(built: Pipeline, tmp_path: Path) -> None:
    before = built.lake.version(TABLE) if built.lake.exists(TABLE) else None
    missing = ["--model", str(tmp_path / "absent.pt"), *built.cli()]
    assert run_job(score_users, missing)[0] == 2
    bad_task = [
        "--model", str(built.model()), *built.cli(), "--set", "score.final_score.task=nope",
    ]  # fmt: skip
    assert run_job(score_users, bad_task)[0] == 2
    after = built.lake.version(TABLE) if built.lake.exists(TABLE) else None
    assert before == after


def test_candidates_follow_the_documented_priority(spark: SparkSession) -> None:
    day = "2026-01-10"
    ts = "2026-01-0{}T10:00:00"
    items = spark.createDataFrame(
        [(f"i{n}", "A" if n < 4 else "B", None) for n in range(8)],
        "item_id string, category_l1 string, created_ts timestamp",
    )
    events = spark.createDataFrame(
        [
            ("u1", "i5", "click", ts.format(8)),  # recently viewed, category B
            ("u1", "i6", "click", ts.format(9)),  # more recent
            ("u2", "i0", "purchase", ts.format(7)),
            ("u2", "i1", "purchase", ts.format(7)),
            ("u2", "i1", "click", ts.format(6)),
        ],
        "user_id string, item_id string, event_type string, event_ts string",
    ).withColumn("event_ts", F.col("event_ts").cast("timestamp"))
    cfg = CandidateConfig(
        per_user=5, top_categories=1, items_per_category=2, recent_items=1,
        recent_event_types=["click"],
    )  # fmt: skip
    users = spark.createDataFrame([("u1",), ("u3",)], "user_id string")
    ranked = eligible_items(items, events, day, cfg)
    got = (
        candidates(users, events, ranked, popular_items(ranked, cfg), cfg)
        .toPandas()
        .sort_values(["user_id", "candidate_rank"])
    )
    rows = {u: list(zip(g["item_id"], g["source"], strict=True)) for u, g in got.groupby("user_id")}
    # Popularity: i1 = 4 + 1, i0 = 4, i5 = i6 = 1; the rest 0 (ties by item_id).
    assert rows["u1"] == [
        ("i6", RECENT),  # the newest view only (recent_items=1)
        ("i5", CATEGORY),  # top category B, by popularity then id
        ("i1", POPULAR),
        ("i0", POPULAR),
        ("i2", POPULAR),
    ]
    # A user without history gets the catalogue by popularity; u2 was not asked for.
    assert rows["u3"] == [(i, POPULAR) for i in ("i1", "i0", "i5", "i6", "i2")]
    assert set(rows) == {"u1", "u3"}
    with pytest.raises(CandidateError, match="only 8 catalogue items"):
        popular_items(ranked, cfg.model_copy(update={"per_user": 9}))
