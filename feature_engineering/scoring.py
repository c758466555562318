"""Batch scoring on Spark: plan, candidates, features as of the day, scores, ranks, check.

``jobs/score_users.py`` parses arguments and calls, in order: :func:`plan_scoring` (every
check that needs no Spark: table name, scoring day, model file, the model's gold build
against the lake's, the final-score formula against the data, the slot context against
the vocabulary), :func:`users_to_score`, :func:`recommend` (a lazy frame) written with
``Lake.write_table``, then :func:`verify_partition`.

Where the time goes, and why the features are built this way. Training's
``feature_frame`` assembles features per *row*: 16 vocabulary joins and the user, item
and affinity joins all run on the frame of pairs (user x 100 candidates, ~100 columns
wide), each a shuffle of that wide frame. Here every feature that belongs to one side is
built and encoded on that side's rows, once: user rows (dense point-in-time features,
region/tier, top category/brand, affinity maps and the slot context, all encoded) for the
scored users; item rows (dense features, catalogue attributes, text embedding, encoded)
for the eligible catalogue, small enough to broadcast. The pairs then get one join with
the user rows (co-partitioned with the candidates, which are computed per user) and one
broadcast join with the item rows; only the user x item affinity shares are computed per
pair. ``tests/test_scoring.py`` checks the rows equal ``build_examples_for``'s (the
training code path) for the same pairs and context.

The point-in-time user and item features are computed per entity as of the scoring day
with the gold functions (``feature_engineering.point_in_time``) from the silver events of
the look-back window: gold's feature tables exist only for the days gold wrote (not for
the default scoring day, the day after the last) and hold no affinity maps.

The slot context (see ``SlotContext``): the weekday is the scoring day's. Page, position,
device and hour left null (the default) are sent unknown (index 0) to a model trained
with ``model.context_dropout``: training hid them together on a share of its rows, so the
model learned "unknown" as the average over the slots the log showed such a pair in, and
the per-task scores keep the logged calibration. A model trained without it gets one of
the user's own logged impressions of the history window instead, drawn by a hash of user,
impression and day (the same impression for all four fields, so their joint distribution
is the logged one); a user without logged impressions gets training's most frequent
values. That draw is independent of the item, while the logging ranker put likely clicks
high, so its mean p(click) runs under the logged rows' (0.895-0.913 on the demo). A
fixed slot (page home, position 1) scores every pair as if shown first. Every context
value is one training contained: the model never sees an index it never learned.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from feature_engineering.candidates import (
    candidates,
    eligible_items,
    popular_items,
)
from feature_engineering.examples import (
    CATEGORICAL_SOURCES,
    ITEM_CATEGORY_COLUMNS,
    TOP_DIMENSIONS,
    dense_feature_names,
    position_bucket,
)
from feature_engineering.gold_config import GoldConfig
from feature_engineering.point_in_time import (
    AFFINITY_DIMENSIONS,
    affinity_share,
    day_number,
    days_before,
    item_defaults,
    item_features,
    user_affinities,
    user_defaults,
    user_features,
)
from feature_engineering.text_embedding import embedding_columns
from feature_engineering.vocab import apply_vocabulary
from mtl_model.artifact import ArtifactError, ModelArtifact, artifact_from_bytes
from mtl_model.scoring import (
    BatchScorer,
    feature_columns,
    model_version_of,
    score_columns,
)
from mtl_model.scoring_config import FinalScoreConfig, ScoringConfig, SlotContext
from mtlrec.errors import CheckError, InputError
from mtlrec.feature_spec import FeatureSpec
from mtlrec.gold_build import GoldBuild, resolve_build
from mtlrec.lake import Lake, LakeError, validate_table_name
from mtlrec.log import get_logger
from mtlrec.tables import (
    GOLD_ITEM_TEXT_EMBEDDINGS,
    GOLD_VOCABULARY,
    SILVER_EVENTS,
    SILVER_ITEMS,
    SILVER_USERS,
)

PARTITION_COLUMNS = ["scored_dt", "model_version"]
# Context features and the raw column each indexes (all are user-level while scoring).
CONTEXT_FEATURES = {
    "cat_page": "page",
    "cat_position_bucket": "position_bucket",
    "cat_device": "device",
    "cat_hour": "hour",
    "cat_weekday": "weekday",
}
USER_SOURCES = {
    "cat_user": "user_id",
    "cat_market": "market",
    "cat_user_region": "region",
    "cat_user_tier": "tier",
    "cat_user_top_category_l1": "user_top_category_l1",
    "cat_user_top_brand": "user_top_brand",
    **CONTEXT_FEATURES,
}
ITEM_SOURCES = {
    "cat_item": "item_id",
    "cat_category_l1": "category_l1",
    "cat_category_l2": "category_l2",
    "cat_category_l3": "category_l3",
    "cat_brand": "brand",
}
assert set(USER_SOURCES) | set(ITEM_SOURCES) == set(CATEGORICAL_SOURCES)
# Vocabularies up to this many values are applied as literal maps (SmallVocabularies).
MAP_MAX_VALUES = 4096
_log = get_logger("scoring")


class ScoringInputError(InputError, ValueError):
    """Input the job cannot score from; nothing was written."""


class PartitionCheckError(CheckError, RuntimeError):
    """The written partition is not a complete, non-degenerate ranking per scored user."""


@dataclass(frozen=True)
class ContextValues:
    """Training's values of the context features: value -> train-day count."""

    counts: Mapping[str, Mapping[str, int]]  # feature (cat_*) -> value -> count

    def known(self, feature: str, value: str) -> bool:
        return value in self.counts.get(feature, {})

    def most_frequent(self, feature: str) -> str:
        values = self.counts.get(feature, {})
        if not values:
            raise ScoringInputError(f"the training vocabulary holds no value of {feature}")
        return max(sorted(values), key=lambda v: values[v])

    def values(self, feature: str) -> list[str]:
        return sorted(self.counts.get(feature, {}))


@dataclass(frozen=True)
class SmallVocabularies:
    """The build's vocabulary rows of every feature with at most ``MAP_MAX_VALUES`` values
    (everything but users and items on a real lake): feature -> value -> (index, count).

    Read once on the driver and applied as literal maps: one projection instead of a join,
    and a broadcast job that reads the vocabulary table, per feature. Users and items, whose
    vocabularies grow with the data, stay joins (nothing per user on the driver).
    """

    rows: Mapping[str, Mapping[str, tuple[int, int]]]

    def index_map(self, feature: str) -> Column:
        """A map column value -> index of ``feature`` (its vocabulary must be small)."""
        pairs = sorted((value, index) for value, (index, _) in self.rows[feature].items())
        if not pairs:
            return F.create_map().cast("map<string,bigint>")
        # One SQL expression, parsed once by the JVM: a literal per value built one Py4J
        # call at a time cost the scoring job's driver seconds on a real vocabulary. Values
        # travel as UTF-8 hex, so no value (quotes, backslashes, any script) needs escaping.
        keys = ", ".join(f"cast(unhex('{value.encode().hex()}') as string)" for value, _ in pairs)
        indices = ", ".join(f"{int(index)}L" for _, index in pairs)
        return F.expr(f"map_from_arrays(array({keys}), array({indices}))")

    def context(self) -> ContextValues:
        return ContextValues(
            {
                feature: {value: count for value, (_, count) in self.rows.get(feature, {}).items()}
                for feature in CONTEXT_FEATURES
            }
        )


@dataclass(frozen=True)
class ScoringPlan:
    """The validated inputs of one scoring run."""

    table: str
    payload: bytes
    spec: FeatureSpec
    build: GoldBuild
    vocabularies: SmallVocabularies
    model_version: str
    day: str
    scored_at: dt.datetime
    learned_unknown: frozenset[str]  # slot features whose index 0 the model was trained on

    @property
    def context(self) -> ContextValues:
        return self.vocabularies.context()


def read_model_bytes(path: str, lake: Lake) -> bytes:
    if "://" not in path:
        local = Path(path)
        if not local.is_file():
            raise ScoringInputError(f"--model {path}: no such file")
        return local.read_bytes()
    filesystem, inner = lake.storage.filesystem_for(path)
    with filesystem.open_input_file(inner) as handle:
        return bytes(handle.read())


def model_from_bytes(payload: bytes, name: str) -> ModelArtifact:
    """The artifact in ``payload``; ``ScoringInputError`` naming ``--model name`` otherwise."""
    try:
        return artifact_from_bytes(payload, f"--model {name}")
    except ArtifactError as exc:
        raise ScoringInputError(str(exc)) from None


def scoring_day(lake: Lake, requested: str | None) -> str:
    """``requested`` (validated) or the day after the last silver/events day.

    Features and candidates come from the days before the scoring day, so it must lie
    after the first day of events and at most one day after the last.
    """
    if not lake.exists(SILVER_EVENTS):
        raise ScoringInputError(
            f"{SILVER_EVENTS} does not exist under {lake.root}: run jobs/build_features.py first"
        )
    days = sorted(str(p["dt"]) for p in lake.snapshot_partitions(SILVER_EVENTS) if p.get("dt"))
    if not days:
        raise ScoringInputError(f"{SILVER_EVENTS} holds no days under {lake.root}")
    last = (dt.date.fromisoformat(days[-1]) + dt.timedelta(days=1)).isoformat()
    if requested is None:
        return last
    if not days[0] < requested <= last:
        raise ScoringInputError(
            f"--date {requested}: scoring needs events before the day; {SILVER_EVENTS} "
            f"holds {days[0]}..{days[-1]}, so give a day in {days[0]}..{last} (exclusive of "
            f"the first)"
        )
    return requested


def check_final_score(spec: FeatureSpec, cfg: FinalScoreConfig, lake: Lake) -> None:
    """The formula's tasks exist and the data it needs is there (no degenerate ranking)."""
    names = [t.name for t in spec.tasks]
    unknown = [t for t in cfg.tasks_used() if t not in names]
    if unknown:
        raise ScoringInputError(
            f"score.final_score names tasks {unknown}; the model's tasks are {names}"
        )
    if cfg.formula == "expected_value" and cfg.price_exponent > 0:
        prices = lake.read_arrow(SILVER_ITEMS, columns=["price"]).column("price")
        if not pc.any(pc.greater(pc.fill_null(prices, 0.0), 0.0)).as_py():
            raise ScoringInputError(
                f"score.final_score.formula=expected_value multiplies by price, but "
                f"{SILVER_ITEMS} has no positive price: set score.final_score.formula=task "
                f"(or score.final_score.price_exponent=0)"
            )


def small_vocabularies(lake: Lake, build: GoldBuild) -> SmallVocabularies:
    """The build's vocabulary rows of its small features (``SmallVocabularies``), read file
    by file; the large ones (users, items) are skipped by their size in the spec."""
    small = [
        f.name
        for f in build.spec.categorical
        if f.vocab_size <= MAP_MAX_VALUES or f.name in CONTEXT_FEATURES
    ]
    rows: dict[str, dict[str, tuple[int, int]]] = {f: {} for f in small}
    wanted = pa.array(small, pa.string())
    for uri in lake.snapshot_files(GOLD_VOCABULARY, version=build.ref.vocabulary_version):
        filesystem, path = lake.storage.filesystem_for(uri)
        for batch in pq.ParquetFile(path, filesystem=filesystem).iter_batches(
            columns=["feature", "value", "index", "count"]
        ):
            kept = batch.filter(pc.is_in(batch.column("feature"), value_set=wanted))
            for row in kept.to_pylist():
                rows[row["feature"]][row["value"]] = (int(row["index"]), int(row["count"]))
    return SmallVocabularies(rows)


def encode_categoricals(
    frame: DataFrame,
    vocabulary: DataFrame,
    small: SmallVocabularies,
    sources: Mapping[str, str],
) -> DataFrame:
    """``apply_vocabulary``'s int64 index columns (0 = not in the vocabulary): small
    vocabularies through their literal maps, the others through joins."""
    joined = {f: raw for f, raw in sources.items() if f not in small.rows}
    frame = apply_vocabulary(frame, vocabulary, joined)
    return frame.select(
        "*",
        *[
            F.coalesce(small.index_map(f)[F.col(raw).cast("string")], F.lit(0))
            .cast("long")
            .alias(f)
            for f, raw in sources.items()
            if f in small.rows
        ],
    )


def check_context(context: SlotContext, values: ContextValues, gold: GoldConfig) -> None:
    """Configured context values must be ones training contained (else the model would
    read an untrained out-of-vocabulary row). A feature training only ever saw unknown (a
    log without devices, say) is fed unknown whatever is configured."""
    bucket = _position_bucket_label(context.position, gold.position_buckets)
    for setting, feature, value in (
        ("page", "cat_page", context.page),
        ("device", "cat_device", context.device),
        ("position", "cat_position_bucket", bucket),
        ("hour_utc", "cat_hour", None if context.hour_utc is None else str(context.hour_utc)),
    ):
        if not values.values(feature):
            continue
        if value is not None and not values.known(feature, value):
            raise ScoringInputError(
                f"score.context.{setting}={value!r} never occurs in training "
                f"(known: {values.values(feature)}): choose one of those, or null for the "
                f"user's logged context"
            )


def _position_bucket_label(position: int | None, bounds: list[int]) -> str | None:
    """Python twin of ``examples.position_bucket`` for one value."""
    if position is None:
        return None
    label = None
    for low, high in zip(bounds, [*bounds[1:], None], strict=True):
        if position >= low:
            if high is None:
                label = f"{low}+"
            elif high == low + 1:
                label = str(low)
            else:
                label = f"{low}-{high - 1}"
    return label


def plan_scoring(
    score: ScoringConfig, gold: GoldConfig, lake: Lake, model: str, day: str | None
) -> ScoringPlan:
    """Everything checkable before Spark starts; raises ``ScoringInputError``."""
    try:
        table = validate_table_name(score.table)
    except LakeError as exc:
        raise ScoringInputError(f"score.table: {exc}") from None
    scoring_date = scoring_day(lake, day)
    payload = read_model_bytes(model, lake)
    artifact = model_from_bytes(payload, model)
    build = resolve_build(lake, artifact.spec, artifact.gold_build)
    check_final_score(artifact.spec, score.final_score, lake)
    vocabularies = small_vocabularies(lake, build)
    check_context(score.context, vocabularies.context(), gold)
    return ScoringPlan(
        table=table,
        payload=payload,
        spec=artifact.spec,
        build=build,
        vocabularies=vocabularies,
        model_version=score.model_version or model_version_of(payload),
        day=scoring_date,
        scored_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        learned_unknown=learned_unknown(artifact),
    )


def learned_unknown(artifact: ModelArtifact) -> frozenset[str]:
    """The slot features the model learned "unknown" for: those its spec marks
    ``unknown_at_scoring`` when it was trained with ``model.context_dropout`` (an older
    spec marks none)."""
    if artifact.model_config.context_dropout <= 0:
        return frozenset()
    return frozenset(f.name for f in artifact.spec.categorical if f.unknown_at_scoring)


def users_to_score(
    spark: SparkSession, lake: Lake, day: str, active_days: int, users_file: str | None
) -> DataFrame:
    """One ``user_id`` per row: the ``users_file`` list, or the users active before ``day``."""
    if users_file is None:
        events = lake.read_table(
            spark, SILVER_EVENTS, filters=[("dt", "in", days_before(day, active_days))]
        )
        return events.select("user_id").where(F.col("user_id").isNotNull()).distinct()
    if "://" not in users_file and not Path(users_file).is_file():
        raise ScoringInputError(f"--users {users_file}: no such file")
    lines = spark.read.text(users_file).select(F.trim("value").alias("user_id"))
    return lines.where((F.col("user_id") != "") & ~F.col("user_id").startswith("#")).distinct()


def spark_weekday(day: str) -> str:
    """Spark's ``dayofweek`` of ``day`` as training's string (1 = Sunday ... 7 = Saturday)."""
    return str((dt.date.fromisoformat(day).weekday() + 1) % 7 + 1)


def logged_slot(events: DataFrame, day: str) -> DataFrame:
    """(user_id, page, position, device, hour): one of each user's logged impressions in
    ``events``, drawn by a hash of the user, the impression and ``day`` (reproducible; a
    different draw each day)."""
    impressions = events.where(F.col("event_type") == "impression").select(
        "user_id",
        F.struct(
            "page",
            "position",
            "device",
            F.hour("event_ts").cast("string").alias("hour"),
        ).alias("slot"),
        F.xxhash64("user_id", "item_id", "event_ts", "position", F.lit(day)).alias("draw"),
    )
    return (
        impressions.groupBy("user_id")
        .agg(F.min_by("slot", "draw").alias("slot"))
        .select("user_id", "slot.page", "slot.position", "slot.device", "slot.hour")
    )


def user_context(
    users: DataFrame,
    events: DataFrame,
    context: SlotContext,
    values: ContextValues,
    day: str,
    position_buckets: list[int],
    learned_unknown: frozenset[str],
) -> DataFrame:
    """(user_id, page, position, device, hour, weekday): the slot each user is scored in,
    every value one training contained (see the module docstring). ``events`` are silver
    events of the history window.

    A configured ``score.context`` value is used as it is; an unset one is unknown (null,
    index 0) when the model learned unknown for it (``learned_unknown``: trained with
    ``model.context_dropout``). Otherwise it is taken from one of the user's own logged
    impressions (``logged_slot``), the same impression for every such feature so their
    joint distribution is the logged one; a user without logged impressions, or whose
    drawn value training never contained, gets training's most frequent value.
    """
    weekday = spark_weekday(day)
    if values.values("cat_weekday") and not values.known("cat_weekday", weekday):
        # Training never saw this weekday (a log shorter than a week): its index would be
        # the untrained OOV row, so score under training's most frequent weekday instead.
        _log.warning("weekday %s of %s is not in training; using the most frequent", weekday, day)
        weekday = values.most_frequent("cat_weekday")
    bucket = position_bucket(F.col("position"), position_buckets)
    settings: list[tuple[str, str, str | int | None, Column]] = [
        ("page", "cat_page", context.page, F.col("page")),
        ("position", "cat_position_bucket", context.position, bucket),
        ("device", "cat_device", context.device, F.col("device")),
        ("hour", "cat_hour", None if context.hour_utc is None else str(context.hour_utc),
         F.col("hour")),
        ("weekday", "cat_weekday", weekday, F.lit(weekday)),
    ]  # fmt: skip
    columns = []
    drawn = False
    for name, feature, setting, label in settings:
        kind = "int" if name == "position" else "string"
        if not values.values(feature):
            # Training only ever saw this feature unknown (a log without devices, say):
            # null maps to index 0, the row the model learned.
            column = F.lit(None)
        elif setting is not None:
            column = F.lit(setting)
        elif feature in learned_unknown:
            column = F.lit(None)
        else:
            drawn = True
            fallback: str | int = values.most_frequent(feature)
            if name == "position":  # the lowest position of the most frequent bucket
                fallback = int(str(fallback).split("-")[0].rstrip("+"))
            known = label.isin(values.values(feature))
            column = F.when(known, F.col(name)).otherwise(F.lit(fallback))
        columns.append(column.cast(kind).alias(name))
    frame = users.select("user_id")
    if drawn:
        frame = frame.join(logged_slot(events, day), "user_id", "left")
    return frame.select("user_id", *columns)


def user_rows(
    users: DataFrame,
    events: DataFrame,
    silver_users: DataFrame,
    slots: DataFrame,
    vocabulary: DataFrame,
    small: SmallVocabularies,
    day: str,
    cfg: GoldConfig,
) -> DataFrame:
    """One encoded row per scored user: user-side categoricals (context included), dense
    user features as of ``day``, and the affinity maps the per-pair shares read."""
    as_of = [day_number(day)]
    affinity = user_affinities(events, as_of, cfg).drop("as_of_day")
    frame = (
        users.select("user_id")
        .join(user_features(events, as_of, cfg).drop("as_of_day"), "user_id", "left")
        .transform(user_defaults(cfg).fill)
        .join(silver_users.select("user_id", "region", "tier"), "user_id", "left")
        # A pair's market is the user's region: how silver derives an event's market.
        .withColumn("market", F.col("region"))
        .join(affinity, "user_id", "left")
        .join(slots, "user_id", "left")
        .withColumn("position_bucket", position_bucket(F.col("position"), cfg.position_buckets))
    )
    return encode_categoricals(frame, vocabulary, small, USER_SOURCES)


def item_rows(
    items: DataFrame,
    events: DataFrame,
    text: DataFrame | None,
    vocabulary: DataFrame,
    small: SmallVocabularies,
    day: str,
    cfg: GoldConfig,
) -> DataFrame:
    """One encoded row per catalogue item: item-side categoricals, dense item features as
    of ``day``, price, age, text embedding, and the raw attributes affinities compare."""
    as_of = [day_number(day)]
    start_of_day = float(day_number(day)) * 86400.0
    frame = (
        items.select("item_id", *ITEM_CATEGORY_COLUMNS, "price", "created_ts")
        .join(item_features(events, as_of, cfg).drop("as_of_day"), "item_id", "left")
        .transform(item_defaults(cfg).fill)
        .withColumn(
            "item_log_price",
            F.coalesce(F.log1p(F.greatest(F.col("price"), F.lit(0.0))), F.lit(0.0)).cast("float"),
        )
        .withColumn(
            "item_age_days",
            F.coalesce(
                F.greatest(
                    (F.lit(start_of_day) - F.col("created_ts").cast("double")) / F.lit(86400.0),
                    F.lit(0.0),
                ),
                F.lit(0.0),
            ).cast("float"),
        )
    )
    if text is not None:
        text_columns = [c for c in text.columns if c != "item_id"]
        frame = frame.join(text, "item_id", "left").fillna(dict.fromkeys(text_columns, 0.0))
    return encode_categoricals(frame, vocabulary, small, ITEM_SOURCES)


def pair_features(
    pairs: DataFrame, users: DataFrame, items: DataFrame, cfg: GoldConfig, text_columns: list[str]
) -> DataFrame:
    """(user_id, item_id, price) plus the model contract's columns for every pair.

    ``users`` / ``items`` come from ``user_rows`` / ``item_rows``; the item rows are
    broadcast (a catalogue), the user rows joined on the key the pairs are partitioned by.
    """
    joined = (
        pairs.select("user_id", "item_id")
        .join(users, "user_id")
        .join(F.broadcast(items), "item_id")
    )
    shares = {f"user_affinity_{d}": affinity_share(d, F.col(d)) for d in AFFINITY_DIMENSIONS}
    return joined.select(
        "user_id",
        "item_id",
        "price",
        *[F.col(c).cast("long").alias(c) for c in CATEGORICAL_SOURCES],
        *[
            (shares[c] if c in shares else F.col(c)).cast("float").alias(c)
            for c in dense_feature_names(cfg)
        ],
        *[F.col(c).cast("float").alias(c) for c in text_columns],
    )


def final_score_column(cfg: FinalScoreConfig) -> Column:
    """``score.final_score`` as a column over ``score_<task>`` and ``price``."""
    if cfg.formula == "weighted_sum":
        total = F.lit(0.0)
        for task, weight in sorted(cfg.weights.items()):
            total = total + F.lit(weight) * F.col(f"score_{task}")
        return total
    score = F.col(f"score_{cfg.task}")
    if cfg.formula == "task":
        return score
    # Unknown or negative prices count as 0: such an item has no expected revenue.
    price = F.greatest(F.coalesce(F.col("price"), F.lit(0.0)), F.lit(0.0))
    return score * F.pow(price, F.lit(cfg.price_exponent))


def history_events(
    spark: SparkSession, lake: Lake, score: ScoringConfig, gold: GoldConfig, day: str
) -> DataFrame:
    """The silver events every step reads (candidates' history window and the features'
    look-back), only the columns they use (a lazy Parquet read, not cached: see
    ``jobs/score_users.py``). Only events ingested before ``day`` are known on it (their
    event day is before it too)."""
    window = max(score.candidates.history_days, gold.lookback_days)
    return lake.read_table(
        spark, SILVER_EVENTS, filters=[("dt", "in", days_before(day, window))]
    ).where(F.col("ingest_dt") < day).select(
        "user_id", "item_id", "event_type", "event_ts", "dt", "ingest_dt", "item_price",
        "page", "position", "device",
        *sorted({*AFFINITY_DIMENSIONS, *TOP_DIMENSIONS}),
    )  # fmt: skip


def scoring_features(
    spark: SparkSession,
    lake: Lake,
    score: ScoringConfig,
    gold: GoldConfig,
    plan: ScoringPlan,
    pairs: DataFrame,
    users: DataFrame,
    history: DataFrame,
) -> DataFrame:
    """(user_id, item_id, price) and the model contract's columns for (user_id, item_id)
    ``pairs`` as of the scoring day, in each user's slot context; ``users`` holds each
    user_id of the pairs once (the job passes its persisted users: deriving them from the
    pairs would run candidate generation a second time); ``history`` from
    ``history_events``. The build's vocabulary and text embeddings, at its versions."""
    versions = plan.build.versions
    vocabulary = lake.read_table(spark, GOLD_VOCABULARY, version=versions[GOLD_VOCABULARY])
    small = plan.vocabularies
    text_version = versions.get(GOLD_ITEM_TEXT_EMBEDDINGS)
    text = (
        lake.read_table(spark, GOLD_ITEM_TEXT_EMBEDDINGS, version=text_version)
        if plan.build.ref.text_fingerprint is not None and text_version is not None
        else None
    )
    # User-side aggregates read only the scored users' events: a --users list of 100 users
    # must not pay for every user of the history window.
    theirs = history.join(users, "user_id", "left_semi")
    recent = theirs.where(F.col("dt").isin(days_before(plan.day, score.candidates.history_days)))
    slots = user_context(
        users,
        recent,
        score.context,
        plan.context,
        plan.day,
        gold.position_buckets,
        plan.learned_unknown,
    )
    silver_users = lake.read_table(spark, SILVER_USERS)
    return pair_features(
        pairs,
        user_rows(users, theirs, silver_users, slots, vocabulary, small, plan.day, gold),
        item_rows(
            lake.read_table(spark, SILVER_ITEMS), history, text, vocabulary, small, plan.day, gold
        ),
        gold,
        embedding_columns(gold.text) if text is not None else [],
    )


def model_scores(
    spark: SparkSession, score: ScoringConfig, plan: ScoringPlan, features: DataFrame
) -> DataFrame:
    """(user_id, item_id, price, score_<task>...): the model inside ``mapInArrow``."""
    columns = feature_columns(plan.spec)
    scorer = BatchScorer(
        version=plan.model_version,
        payload=spark.sparkContext.broadcast(plan.payload),
        columns=columns,
        id_columns=("user_id", "item_id", "price"),
        batch_size=score.batch_size,
        torch_threads=score.torch_threads,
    )
    schema = T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("item_id", T.StringType()),
            T.StructField("price", T.DoubleType()),
        ]
        + [T.StructField(name, T.DoubleType()) for name in score_columns(plan.spec)]
    )
    return features.select("user_id", "item_id", "price", *columns.names()).mapInArrow(
        scorer, schema
    )


def recommend(
    spark: SparkSession,
    lake: Lake,
    score: ScoringConfig,
    gold: GoldConfig,
    plan: ScoringPlan,
    users: DataFrame,
    history: DataFrame,
) -> DataFrame:
    """Candidates, features, model scores, final score, top-K ranks (a lazy frame).

    ``users`` from ``users_to_score``, ``history`` from ``history_events``.
    """
    recent = history.where(F.col("dt").isin(days_before(plan.day, score.candidates.history_days)))
    ranked_items = eligible_items(lake.read_table(spark, SILVER_ITEMS), recent, plan.day,
                                  score.candidates)  # fmt: skip
    popular = popular_items(ranked_items, score.candidates)
    pairs = candidates(users, recent, ranked_items, popular, score.candidates)
    features = scoring_features(spark, lake, score, gold, plan, pairs, users, history)
    by_user = Window.partitionBy("user_id").orderBy(F.col("final_score").desc(), "item_id")
    return (
        model_scores(spark, score, plan, features)
        .withColumn("final_score", final_score_column(score.final_score).cast("double"))
        .withColumn("rank", F.row_number().over(by_user))
        .where(F.col("rank") <= score.top_k)
        .select(
            "user_id",
            F.col("rank").cast("int").alias("rank"),
            "item_id",
            *score_columns(plan.spec),
            "final_score",
            F.lit(plan.scored_at).cast("timestamp").alias("scored_at"),
            F.lit(plan.day).alias("scored_dt"),
            F.lit(plan.model_version).alias("model_version"),
        )
    )


def verify_partition(
    spark: SparkSession, lake: Lake, plan: ScoringPlan, users: int, top_k: int
) -> int:
    """Rows of the written partition; raises ``PartitionCheckError`` unless every scored
    user holds ranks 1..top_k and not all of a user's final scores are equal (a ranking
    that is only the item_id tie-break)."""
    row = (
        lake.read_table(
            spark,
            plan.table,
            filters=[("scored_dt", "=", plan.day), ("model_version", "=", plan.model_version)],
        )
        .groupBy("user_id")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.countDistinct("rank").alias("ranks"),
            F.min("rank").alias("low"),
            F.max("rank").alias("high"),
            (F.min("final_score") == F.max("final_score")).alias("flat"),
        )
        .agg(
            F.count(F.lit(1)).alias("users"),
            F.sum("n").alias("rows"),
            F.sum(
                (
                    (F.col("n") == top_k)
                    & (F.col("ranks") == top_k)
                    & (F.col("low") == 1)
                    & (F.col("high") == top_k)
                ).cast("int")
            ).alias("complete"),
            F.sum((F.col("flat") & (F.col("n") > 1)).cast("int")).alias("flat"),
        )
        .first()
    )
    assert row is not None
    where = f"{plan.table} scored_dt={plan.day} model_version={plan.model_version}"
    if (row["users"], row["complete"]) != (users, users):
        raise PartitionCheckError(
            f"{where}: {row['complete']} of {row['users']} users hold ranks 1..{top_k}; "
            f"{users} users were scored"
        )
    if row["flat"]:
        raise PartitionCheckError(
            f"{where}: {row['flat']} of {users} users have all final scores equal (the "
            f"ranking is only the item_id tie-break): check score.final_score"
        )
    return int(row["rows"])
