"""The gold stage: silver -> examples, feature tables, vocabulary, spec.

``build_gold`` (called by ``jobs/build_features.py --stage gold``) reads one
snapshot of silver/events, silver/items and silver/users and writes:

- ``gold/item_text_embeddings`` (item_id, text_emb_*): the catalog encoded once;
- ``gold/vocabulary`` (feature, value, index, count): train days only;
- ``gold/user_features`` / ``gold/item_features``: point-in-time, by as-of ``dt``;
- ``gold/examples``: one row per impression, partitioned by (split, dt);
- ``gold/feature_spec``: one row per build with the spec and the table versions
  (``mtlrec.gold_snapshot.GoldSnapshot``), written last: it marks the build complete.

Re-running for some days (``features.gold.days``) replaces exactly those days'
partitions (whatever split they were in before). Vocabularies and statistics
always come from every train day, so a partial rebuild on unchanged silver
gives identical indices.

``build_examples_for`` rebuilds the same features for new (user, item) pairs as
of a day, for scoring, through the same functions and the stored vocabulary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_engineering.examples import (
    CATEGORICAL_SOURCES,
    ITEM_CATEGORY_COLUMNS,
    TARGET_COLUMNS,
    TOP_DIMENSIONS,
    FeatureSources,
    PointInTimeFeatures,
    dense_feature_names,
    encode,
    feature_frame,
    point_in_time_features,
)
from feature_engineering.gold_config import GoldConfig
from feature_engineering.labels import LABEL_COLUMNS, impression_labels
from feature_engineering.point_in_time import day_number, day_string, days_before
from feature_engineering.spec import build_spec, dense_statistics
from feature_engineering.splits import SplitPlan, plan_splits
from feature_engineering.text_embedding import (
    embedding_columns,
    encode_items,
    fit_projection,
    project,
)
from feature_engineering.vocab import build_vocabulary, vocabulary_sizes
from mtlrec.errors import InputError
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.log import get_logger, log_stage
from mtlrec.spark import session_conf
from mtlrec.tables import (
    GOLD_EXAMPLES,
    GOLD_FEATURE_SPEC,
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_TEXT_EMBEDDINGS,
    GOLD_USER_FEATURES,
    GOLD_VOCABULARY,
    SILVER_EVENTS,
    SILVER_ITEMS,
    SILVER_TABLES,
    SILVER_USERS,
)

_log = get_logger("gold")


class GoldError(InputError, RuntimeError):
    """The gold stage cannot run on this input or configuration."""


def build_gold(spark: SparkSession, lake: Lake, cfg: GoldConfig) -> str:
    """Build every gold table from the current silver snapshot; returns the build id."""
    started = time.monotonic()
    build_id = f"gold-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    for table in SILVER_TABLES:
        if not lake.exists(table):
            raise GoldError(f"{table} does not exist under {lake.root}: run the silver stage first")
    versions = {t: lake.version(t) for t in SILVER_TABLES}
    partitions = None if cfg.shuffle_partitions is None else str(cfg.shuffle_partitions)
    with session_conf(spark, {"spark.sql.shuffle.partitions": partitions}), ExitStack() as held:
        # What several writes use is staged once as Parquet on the lake's storage, not
        # cached: Spark builds a cached partition's column buffers in the heap, and the
        # cached labelled features of 9.5M impressions ran a 4g driver out of memory.
        # silver/events is read again where it is used: it is Parquet already.
        def staged(frame: DataFrame, table: str) -> DataFrame:
            return held.enter_context(lake.staged(frame, table))

        events, items, users = (
            lake.read_table(spark, t, version=versions[t]) for t in SILVER_TABLES
        )
        impressions = events.where(F.col("event_type") == "impression")
        plan, days = _plan_days(impressions, cfg)
        _log.info("gold %s: writing days %s of split %s", build_id, days, plan)
        text = _build_text_embeddings(lake, items, impressions, plan, versions, cfg)
        sources = FeatureSources(events, items, users, text.frame if text else None)
        # The point-in-time aggregates feed both the examples and the feature tables:
        # computed once. Examples are built for the days written and every train day (the
        # vocabulary and statistics come from all train days).
        feature_days = sorted(set(days) | set(plan.train))
        computed = point_in_time_features(events, feature_days, cfg)
        features = PointInTimeFeatures(
            staged(computed.users, GOLD_USER_FEATURES),
            staged(computed.items, GOLD_ITEM_FEATURES),
            staged(computed.affinities, GOLD_USER_FEATURES),
        )
        raw = staged(
            _labelled_features(impressions, sources, features, plan, feature_days, cfg),
            GOLD_EXAMPLES,
        )
        train = raw.where(F.col("split") == "train")
        vocab_version = lake.write_table(
            build_vocabulary(train, CATEGORICAL_SOURCES, cfg.vocab_min_count),
            GOLD_VOCABULARY,
            mode="overwrite",
        ).version
        vocabulary = lake.read_table(spark, GOLD_VOCABULARY, version=vocab_version).persist()
        spec = build_spec(
            vocabulary_sizes(vocabulary, list(CATEGORICAL_SOURCES)),
            cfg.embedding_dim,
            dense_statistics(train, dense_feature_names(cfg), cfg.std_floor),
            embedding_columns(cfg.text) if text else [],
            plan,
        )
        examples = encode(
            raw.where(F.col("dt").isin(days)),
            vocabulary,
            cfg,
            embedding_columns(cfg.text) if text else [],
            passthrough=[*LABEL_COLUMNS, "split"],
        )
        written = lake.write_table(
            examples,
            GOLD_EXAMPLES,
            mode="overwrite",
            partition_by=["split", "dt"],
            replace_partitions=_partitions_of_days(lake, GOLD_EXAMPLES, days, plan.split_of()),
        )
        snapshot = GoldSnapshot(
            build_id=build_id,
            spec=spec,
            created_at=dt.datetime.now(dt.UTC),
            versions={
                **versions,
                GOLD_EXAMPLES: written.version,
                GOLD_VOCABULARY: vocab_version,
                GOLD_ITEM_TEXT_EMBEDDINGS: text.version if text else None,
                **_write_feature_tables(lake, features, items, days),
            },
            days_written=days,
            text_fingerprint=text.fingerprint if text else None,
        )
        # The spec row goes last: it marks the build complete and names what it wrote.
        lake.write_arrow(snapshot.to_arrow(), GOLD_FEATURE_SPEC, mode="append")
        vocabulary.unpersist()
    log_stage(
        _log,
        "gold",
        build_id=build_id,
        rows=written.rows,
        bytes=written.bytes,
        days=len(days),
        categorical=len(spec.categorical),
        dense=len(spec.dense),
        seconds=time.monotonic() - started,
    )
    return build_id


def _plan_days(impressions: DataFrame, cfg: GoldConfig) -> tuple[SplitPlan, list[str]]:
    """The split plan over the days holding impressions, and the days to write."""
    all_days = sorted(r["dt"] for r in impressions.select("dt").distinct().collect())
    if not all_days:
        raise GoldError(f"{SILVER_EVENTS} holds no impressions")
    plan = plan_splits(all_days, cfg.splits)
    split_of = plan.split_of()
    days = cfg.days if cfg.days is not None else sorted(split_of)
    unknown = [d for d in days if d not in split_of]
    if unknown:
        raise GoldError(
            f"features.gold.days {unknown} hold no impressions or are in no split "
            f"(days with impressions: {all_days[0]}..{all_days[-1]})"
        )
    return plan, days


def _labelled_features(
    impressions: DataFrame,
    sources: FeatureSources,
    features: PointInTimeFeatures,
    plan: SplitPlan,
    feature_days: list[str],
    cfg: GoldConfig,
) -> DataFrame:
    """Raw features, labels and split of the impressions of ``feature_days`` (``features``
    are computed as of each of them)."""
    split_map = F.create_map(*[F.lit(x) for kv in plan.split_of().items() for x in kv])
    targets = impressions.where(F.col("dt").isin(feature_days)).select(
        F.col("event_id").alias("impression_id"), *TARGET_COLUMNS[1:]
    )
    return (
        feature_frame(targets, sources, features, cfg)
        .join(impression_labels(sources.events, cfg.attribution_window_hours), "impression_id")
        .withColumn("split", split_map[F.col("dt")])
    )


@dataclass(frozen=True)
class _TextEmbeddings:
    frame: DataFrame
    version: int
    fingerprint: str


def _build_text_embeddings(
    lake: Lake,
    items: DataFrame,
    impressions: DataFrame,
    plan: SplitPlan,
    versions: dict[str, int],
    cfg: GoldConfig,
) -> _TextEmbeddings | None:
    """Encode the catalog, reduce with a projection fitted on train-day items, write it.

    The encoder is the one expensive step that depends on nothing but the
    catalog, the train days' items and the text config: when the newest build
    recorded the same inputs (its fingerprint), its table version is reused.
    """
    if not cfg.text.enabled:
        return None
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "items": versions[SILVER_ITEMS],
                "events": versions[SILVER_EVENTS],
                "train_days": plan.train,
                "text": cfg.text.model_dump(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    spark = items.sparkSession
    previous = GoldSnapshot.latest(lake)
    if previous is not None and previous.text_fingerprint == fingerprint:
        version = previous.version(GOLD_ITEM_TEXT_EMBEDDINGS)
        _log.info(
            "item text embeddings unchanged: reusing %s version %d",
            GOLD_ITEM_TEXT_EMBEDDINGS,
            version,
        )
        return _TextEmbeddings(
            lake.read_table(spark, GOLD_ITEM_TEXT_EMBEDDINGS, version), version, fingerprint
        )
    vectors = encode_items(items, cfg.text).persist(StorageLevel.MEMORY_AND_DISK)
    train_items = impressions.where(F.col("dt").isin(plan.train)).select("item_id")
    projection = fit_projection(vectors, train_items, cfg.text)
    result = lake.write_table(
        project(vectors, projection, cfg.text), GOLD_ITEM_TEXT_EMBEDDINGS, mode="overwrite"
    )
    vectors.unpersist()
    assert result.version is not None
    frame = lake.read_table(spark, GOLD_ITEM_TEXT_EMBEDDINGS, version=result.version)
    return _TextEmbeddings(frame, result.version, fingerprint)


def _partitions_of_days(
    lake: Lake, table: str, days: Sequence[str], split_of: dict[str, str]
) -> list[dict[str, str]]:
    """Every (split, dt) partition to replace: the new ones and any old one of these days."""
    wanted = {(split_of[d], d) for d in days}
    if lake.exists(table):
        for part in lake.snapshot_partitions(table):
            if part.get("dt") in days and part.get("split") is not None:
                wanted.add((str(part["split"]), str(part["dt"])))
    return [{"split": s, "dt": d} for s, d in sorted(wanted)]


def _write_feature_tables(
    lake: Lake, features: PointInTimeFeatures, items: DataFrame, days: list[str]
) -> dict[str, int | None]:
    """gold/user_features and gold/item_features for ``days``, keyed by entity and as-of dt:
    the rows of ``features`` (computed for the examples) as of those days."""
    as_of = F.col("as_of_day").isin([day_number(d) for d in days])
    as_of_dt = day_string(F.col("as_of_day"))
    tops = features.affinities.where(as_of).select(
        "user_id", "as_of_day", *[f"user_top_{d}" for d in TOP_DIMENSIONS]
    )
    users = (
        features.users.where(as_of)
        .join(tops, ["user_id", "as_of_day"], "left")
        .withColumn("dt", as_of_dt)
        .drop("as_of_day")
    )
    item_rows = (
        features.items.where(as_of)
        .withColumn("dt", as_of_dt)
        .drop("as_of_day")
        .join(items.select("item_id", *ITEM_CATEGORY_COLUMNS), "item_id", "left")
    )
    replace = [{"dt": d} for d in days]
    versions: dict[str, int | None] = {}
    for table, frame in ((GOLD_USER_FEATURES, users), (GOLD_ITEM_FEATURES, item_rows)):
        versions[table] = lake.write_table(
            frame, table, mode="overwrite", partition_by=["dt"], replace_partitions=replace
        ).version
    return versions


def build_examples_for(
    spark: SparkSession, lake: Lake, cfg: GoldConfig, pairs: DataFrame, as_of_dt: str
) -> DataFrame:
    """Encoded feature rows for (user_id, item_id[, context]) ``pairs`` as of ``as_of_dt``.

    The same functions and the stored vocabulary and text embeddings of the
    last build; only silver events before ``as_of_dt`` are read, and of those
    only the ones ingested before it count. Context
    columns the pairs lack (request_id, position, page, device, market,
    event_ts) are null and map to the OOV index.
    """
    missing = [c for c in ("user_id", "item_id") if c not in pairs.columns]
    if missing:
        raise GoldError(f"pairs lack required columns {missing}")
    types = {"position": "int", "event_ts": "timestamp"}
    targets = pairs.select(
        *[
            F.col(c) if c in pairs.columns else F.lit(None).cast(types.get(c, "string")).alias(c)
            for c in TARGET_COLUMNS
            if c != "dt"
        ],
        F.lit(as_of_dt).alias("dt"),
    )
    history_days = days_before(as_of_dt, cfg.lookback_days)
    events = lake.read_table(spark, SILVER_EVENTS, filters=[("dt", "in", history_days)])
    items = lake.read_table(spark, SILVER_ITEMS)
    users = lake.read_table(spark, SILVER_USERS)
    text = lake.read_table(spark, GOLD_ITEM_TEXT_EMBEDDINGS) if cfg.text.enabled else None
    features = point_in_time_features(events, [as_of_dt], cfg)
    frame = feature_frame(targets, FeatureSources(events, items, users, text), features, cfg)
    vocabulary = lake.read_table(spark, GOLD_VOCABULARY)
    text_columns = embedding_columns(cfg.text) if cfg.text.enabled else []
    return encode(frame, vocabulary, cfg, text_columns)
