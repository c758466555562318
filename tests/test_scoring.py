"""Batch scoring end to end on a tiny generated log: the real feature jobs, a real model,
local Spark, the Delta table it writes, and the model's own forward pass as reference."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scoring_pipeline import Pipeline, ScoringRun, pipeline, run_job, score_test_day

from feature_engineering.candidates import (
    CATEGORY,
    POPULAR,
    RECENT,
    CandidateError,
    candidates,
    eligible_items,
    popular_items,
)
from feature_engineering.gold import build_examples_for
from feature_engineering.point_in_time import days_before
from feature_engineering.scoring import (
    CONTEXT_FEATURES,
    ScoringInputError,
    ScoringPlan,
    SmallVocabularies,
    check_final_score,
    history_events,
    learned_unknown,
    plan_scoring,
    scoring_features,
    spark_weekday,
    user_context,
)
from feature_engineering.spec import TASKS
from jobs.config import PipelineConfig
from jobs.score_users import main as score_users
from mtl_model.artifact import load_artifact, save_artifact
from mtl_model.scoring import feature_columns, predict_frame
from mtl_model.scoring_config import CandidateConfig, FinalScoreConfig
from mtlrec.config import load_config
from mtlrec.feature_spec import FeatureSpec
from mtlrec.gold_build import BuildMismatchError, GoldBuildRef
from mtlrec.lake import Lake, PartitionFilter

pytestmark = [pytest.mark.spark, pytest.mark.slow]
TABLE = "gold/recommendations"


@pytest.fixture(scope="module")
def built(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return pipeline(tmp_path_factory)


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


def test_small_vocabulary_maps_take_any_value_literally(spark: SparkSession) -> None:
    """The literal maps are one SQL expression: a value with quotes, backslashes, SQL or
    another script must come back as its own index, and an unknown value as 0."""
    values = ["plain", "it's", 'say "hi"', "back\\slash\\", "') as string)), 1L --"]
    values += ["日本", "😀", ""]
    small = SmallVocabularies(
        {"cat_device": {v: (i + 1, 10) for i, v in enumerate(values)}, "cat_page": {}}
    )
    frame = spark.createDataFrame([(v,) for v in [*values, "unknown"]], "x string")
    got = frame.select(
        "x",
        F.coalesce(small.index_map("cat_device")[F.col("x")], F.lit(0)).alias("index"),
        F.coalesce(small.index_map("cat_page")[F.col("x")], F.lit(0)).alias("empty"),
    ).collect()
    assert {row["x"]: row["index"] for row in got} == {
        **{v: i + 1 for i, v in enumerate(values)},
        "unknown": 0,
    }
    assert {row["empty"] for row in got} == {0}


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


@pytest.fixture(scope="module")
def plan(built: Pipeline, scored: ScoringRun) -> ScoringPlan:
    cfg = built.cfg
    return plan_scoring(cfg.score, cfg.features.gold, built.lake, str(built.model()), scored.day)


@pytest.fixture(scope="module")
def history(spark: SparkSession, built: Pipeline, plan: ScoringPlan) -> DataFrame:
    cfg = built.cfg
    frame = history_events(spark, built.lake, cfg.score, cfg.features.gold, plan.day)
    return frame.persist(StorageLevel.MEMORY_AND_DISK)


def _users_of(pairs: DataFrame) -> DataFrame:
    return pairs.select("user_id").distinct()


def _forward(built: Pipeline, frame: pd.DataFrame) -> pd.DataFrame:
    artifact = load_artifact(built.model())
    return predict_frame(artifact.build(), frame, feature_columns(artifact.spec))


def test_scoring_features_and_scores_equal_the_training_code_path(
    built: Pipeline, scored: ScoringRun, plan: ScoringPlan, history: DataFrame, spark: SparkSession
) -> None:
    """The per-user / per-item assembly gives build_examples_for's rows (gold's code path)
    for the same pairs in the same slot, and the job wrote the model's forward pass of them."""
    recs = _partition(built, scored.day, scored.model_version)
    sample = recs.sample(n=min(40, len(recs)), random_state=3)[["user_id", "item_id"]]
    pairs = spark.createDataFrame(sample, "user_id string, item_id string")
    cfg = built.cfg
    mine = scoring_features(
        spark, built.lake, cfg.score, cfg.features.gold, plan, pairs, _users_of(pairs), history
    )
    recent = history.where(
        F.col("dt").isin(days_before(plan.day, cfg.score.candidates.history_days))
    )
    slots = user_context(
        pairs.select("user_id").distinct(),
        recent,
        cfg.score.context,
        plan.context,
        plan.day,
        cfg.features.gold.position_buckets,
        plan.learned_unknown,
    ).toPandas()
    # The same slot as training rows carry it: an event_ts at the chosen hour on a date
    # with the chosen weekday (the day's own unless training never saw it; event_ts feeds
    # nothing else), and the user's region as the market. An unknown hour with a known
    # weekday has no timestamp: the reference gets hour 0's and its cat_hour is set to
    # unknown below.
    regions = _silver(built, "silver/users").set_index("user_id")["region"]
    context = sample.merge(slots, on="user_id")
    shift = (context["weekday"].astype(int) - int(spark_weekday(plan.day))) % 7
    context["event_ts"] = (
        pd.to_datetime(plan.day)
        + pd.to_timedelta(shift, unit="D")
        + pd.to_timedelta(context["hour"].fillna("0").astype(int), unit="h")
    )
    context["market"] = context["user_id"].map(regions)
    context["position"] = [None if pd.isna(v) else int(v) for v in context["position"]]
    reference = build_examples_for(
        spark,
        built.lake,
        cfg.features.gold,
        spark.createDataFrame(
            context[["user_id", "item_id", "page", "position", "device", "market", "event_ts"]],
            "user_id string, item_id string, page string, position int, device string, "
            "market string, event_ts timestamp",
        ),
        plan.day,
    )
    names = feature_columns(plan.spec).names()
    key = ["user_id", "item_id"]
    got = mine.toPandas().sort_values(key).reset_index(drop=True)
    want = reference.toPandas().sort_values(key).reset_index(drop=True)
    want.loc[want["user_id"].isin(set(slots.loc[slots["hour"].isna(), "user_id"])), "cat_hour"] = 0
    assert len(got) == len(want) == len(sample)
    for name in names:
        np.testing.assert_allclose(
            got[name].to_numpy(np.float64), want[name].to_numpy(np.float64),
            rtol=1e-6, atol=1e-6, err_msg=name,
        )  # fmt: skip
    # Every context index is one training learned: index 0 (unknown) only where training
    # hid the feature (model.context_dropout), which the default model was.
    assert plan.learned_unknown == {"cat_page", "cat_device", "cat_position_bucket", "cat_hour"}
    for feature in CONTEXT_FEATURES:
        learned = 0 if feature in plan.learned_unknown else 1
        assert (got[feature] >= learned).all(), feature
    direct = _forward(built, want).set_axis(want.index)
    written = got[key].merge(recs, on=key)
    for task in built.spec.tasks:
        np.testing.assert_allclose(
            written[f"score_{task.name}"].to_numpy(),
            direct[f"score_{task.name}"].to_numpy(),
            rtol=1e-5, atol=1e-7, err_msg=task.name,
        )  # fmt: skip


def test_a_model_without_context_dropout_is_scored_in_a_slot_drawn_from_the_log(
    built: Pipeline, plan: ScoringPlan, history: DataFrame
) -> None:
    """Index 0 of a slot feature is sent only to a model that learned it; a model trained
    with model.context_dropout 0 gets one of the user's logged slots instead."""
    artifact = load_artifact(built.model())
    assert learned_unknown(artifact) == plan.learned_unknown != frozenset()
    without = artifact.model_config.model_copy(update={"context_dropout": 0.0})
    assert learned_unknown(dataclasses.replace(artifact, model_config=without)) == frozenset()
    cfg = built.cfg
    recent = history.where(
        F.col("dt").isin(days_before(plan.day, cfg.score.candidates.history_days))
    )
    users = recent.where(F.col("event_type") == "impression").select("user_id").distinct()
    slot = ["page", "position", "device", "hour"]

    def slots(learned: frozenset[str]) -> pd.DataFrame:
        return user_context(
            users, recent, cfg.score.context, plan.context, plan.day,
            cfg.features.gold.position_buckets, learned,
        ).toPandas()  # fmt: skip

    drawn, unknown = slots(frozenset()), slots(plan.learned_unknown)
    assert len(drawn) == len(unknown) > 0
    assert drawn[slot].notna().all().all()
    assert drawn["page"].nunique() > 1  # drawn per user, not one fixed value
    assert unknown[slot].isna().all().all()
    # The weekday is never unknown: the scoring day's (or, for a weekday this 5-day log
    # never trained on, training's most frequent), the same for everyone either way.
    assert unknown["weekday"].nunique() == 1
    assert plan.context.known("cat_weekday", unknown["weekday"].iloc[0])
    assert unknown["weekday"].equals(drawn["weekday"])


def test_logged_impressions_scored_in_the_default_context_keep_their_calibration(
    built: Pipeline, plan: ScoringPlan, history: DataFrame, spark: SparkSession
) -> None:
    """Issue 15 point 3: the test day's logged impressions through the scoring path (default
    score.context) predict, per binary task, a mean within 10 % of the gold/examples path
    (each impression's own logged context), and no further than 15 % of the observed rate
    beyond the model's own calibration error."""
    names = feature_columns(plan.spec).names()
    labels = [t.label_column for t in built.spec.tasks]
    logged = built.lake.read_arrow(
        "gold/examples",
        filters=[("split", "=", "test"), ("dt", "=", plan.day)],
        columns=["user_id", "item_id", *names, *labels],
    ).to_pandas()
    pairs = spark.createDataFrame(
        logged[["user_id", "item_id"]].drop_duplicates(), "user_id string, item_id string"
    )
    cfg = built.cfg
    features = scoring_features(
        spark, built.lake, cfg.score, cfg.features.gold, plan, pairs, _users_of(pairs), history
    ).toPandas()
    through_scoring = logged[["user_id", "item_id"]].merge(
        features, on=["user_id", "item_id"], how="left"
    )
    assert len(through_scoring) == len(logged)
    gold_path = _forward(built, logged)
    scoring_path = _forward(built, through_scoring)
    skewed = through_scoring.assign(cat_hour=0, cat_device=0, cat_weekday=0)
    before = _forward(built, skewed)  # the old context: hour, device and weekday unknown
    for task in built.spec.tasks:
        if task.type != "binary":
            continue
        column = f"score_{task.name}"
        observed = float(logged[task.label_column].mean())
        want, got = float(gold_path[column].mean()), float(scoring_path[column].mean())
        print(
            f"{task.name}: observed {observed:.4f}, gold/examples path {want:.4f}, "
            f"scoring path {got:.4f} (unknown context: {float(before[column].mean()):.4f}), "
            f"{len(logged)} impressions, {int(logged[task.label_column].sum())} positives"
        )
        assert got == pytest.approx(want, rel=0.10), task.name
        # Against the observed rate, scoring may add at most 15 % of it to the error the
        # model already has on its own rows (this tiny 3-epoch model is itself off by more
        # than 15 %; on the demo's model the gold path is within a few %).
        assert abs(got - observed) <= abs(want - observed) + 0.15 * observed, task.name


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


def _exit_2(built: Pipeline, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the job, expect exit 2 and exactly one ``score_users:`` line; return it."""
    capsys.readouterr()
    code, _ = run_job(score_users, [*argv, *built.cli()])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("score_")]
    assert code == 2, lines
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(
    built: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = built.lake.version(TABLE) if built.lake.exists(TABLE) else None
    model = ["--model", str(built.model())]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 4)
    pickled = tmp_path / "pickle.pt"
    pickled.write_bytes(pickle.dumps({"format_version": 1, "evil": dataclasses.field}))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases = {
        "no such file": ["--model", str(tmp_path / "absent.pt")],
        "score.table": [*model, "--set", "score.table=../../etc"],
        "tasks": [*model, "--set", "score.final_score.task=nope"],
        "--date 0001-01-01": [*model, "--date", "0001-01-01"],
        "not a model artifact": ["--model", str(garbage)],
        "model artifact": ["--model", str(pickled)],
        "not a model": ["--model", str(empty)],
        "score.context.device": [*model, "--set", "score.context.device=fridge"],
    }
    for needle, argv in cases.items():
        line = _exit_2(built, capsys, argv)
        assert needle in line, (needle, line)
    after = built.lake.version(TABLE) if built.lake.exists(TABLE) else None
    assert before == after


def _model_with_build(built: Pipeline, path: Path, ref: GoldBuildRef | None) -> Path:
    artifact = load_artifact(built.model())
    save_artifact(dataclasses.replace(artifact, gold_build=ref), path)
    return path


def test_a_model_from_another_gold_build_is_refused_unless_vocabularies_are_identical(
    built: Pipeline, plan: ScoringPlan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = plan.build.ref
    assert load_artifact(built.model()).gold_build == mine  # the artifact records its build
    assert plan.build.ref.build_id == mine.build_id
    cfg = built.cfg
    # Another build (absent from this lake) with another vocabulary: refused, naming both.
    other = dataclasses.replace(mine, build_id="gold-elsewhere", vocabulary_hash="1-ffff")
    foreign = _model_with_build(built, tmp_path / "foreign.pt", other)
    line = _exit_2(built, capsys, ["--model", str(foreign)])
    assert "gold-elsewhere" in line and mine.build_id in line and "vocabulary content" in line
    with pytest.raises(BuildMismatchError, match="text-embedding fingerprint"):
        plan_scoring(
            cfg.score,
            cfg.features.gold,
            built.lake,
            str(
                _model_with_build(
                    built,
                    tmp_path / "text.pt",
                    dataclasses.replace(mine, build_id="gold-elsewhere", text_fingerprint="other"),
                )
            ),
            plan.day,
        )
    # A new build with an identical vocabulary: allowed, scored with the lake's build.
    same = dataclasses.replace(mine, build_id="gold-rebuilt-elsewhere")
    allowed = _model_with_build(built, tmp_path / "same.pt", same)
    resolved = plan_scoring(cfg.score, cfg.features.gold, built.lake, str(allowed), plan.day)
    assert resolved.build.ref == mine
    # An artifact that records no build is held to the lake's spec, column for column.
    unrecorded = _model_with_build(built, tmp_path / "unrecorded.pt", None)
    assert plan_scoring(
        cfg.score, cfg.features.gold, built.lake, str(unrecorded), plan.day
    ).build.ref == mine  # fmt: skip


def test_all_equal_final_scores_fail_the_partition_check_with_exit_1(
    built: Pipeline, scored: ScoringRun, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code, _ = run_job(
        score_users,
        [
            "--model", str(built.model()), "--date", scored.day, *built.cli(),
            "--set", "score.final_score.formula=weighted_sum",
            "--set", "score.final_score.weights={click: 0.0}",
            "--set", "score.model_version=flat",
        ],
    )  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("score_")]
    assert code == 1, lines
    assert len(lines) == 1 and "all final scores equal" in lines[0], lines


def test_expected_value_on_a_catalogue_without_prices_exits_2_naming_the_setting(
    lake: Lake,
) -> None:
    lake.write_arrow(
        pa.table({"item_id": ["a", "b"], "price": pa.array([None, None], pa.float64())}),
        "silver/items",
        mode="overwrite",
    )
    spec = load_config(PipelineConfig, None, []).score
    with pytest.raises(ScoringInputError, match=r"score\.final_score\.formula=task"):
        check_final_score(FeatureSpec(tasks=TASKS), spec.final_score, lake)
    check_final_score(FeatureSpec(tasks=TASKS), FinalScoreConfig(formula="task"), lake)
    # The behaviour-CSV mapping has no prices: its config selects a formula that works.
    csv = load_config(PipelineConfig, "cluster_configs/behavior_csv.yaml", [])
    assert csv.score.final_score.formula == "task"
    check_final_score(FeatureSpec(tasks=TASKS), csv.score.final_score, lake)


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
