"""One gold build, pinned: its spec row in ``gold/feature_spec`` plus the versions it names.

The gold stage writes its spec row last, naming the Delta version of every table it read
(silver) and wrote (gold). A job resolves the newest build once (``GoldSnapshot.resolve``)
and passes the snapshot down; training, scoring and the report then read exactly those
versions (``snapshot.version(GOLD_EXAMPLES)``), never "the newest" of a table on their
own, so a gold build that lands mid-run cannot pair an old spec with new examples. The
row's layout is written (``to_arrow``) and read (``from_row``) here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from mtlrec.errors import InputError
from mtlrec.feature_spec import SPEC_FORMAT_VERSION, FeatureSpec
from mtlrec.lake import Lake
from mtlrec.tables import (
    GOLD_EXAMPLES,
    GOLD_FEATURE_SPEC,
    GOLD_ITEM_FEATURES,
    GOLD_ITEM_TEXT_EMBEDDINGS,
    GOLD_USER_FEATURES,
    GOLD_VOCABULARY,
    SILVER_TABLES,
)

VERSIONED_TABLES = (
    *SILVER_TABLES,
    GOLD_EXAMPLES,
    GOLD_VOCABULARY,
    GOLD_ITEM_TEXT_EMBEDDINGS,
    GOLD_USER_FEATURES,
    GOLD_ITEM_FEATURES,
)
"""The tables whose versions a spec row can name, one ``<table>_version`` column each."""


class GoldSnapshotError(InputError, ValueError):
    """No usable gold build: the tables are missing, or the spec row lacks a version."""


def version_column(table: str) -> str:
    """'silver/events' -> 'silver_events_version'."""
    return table.replace("/", "_") + "_version"


@dataclass(frozen=True)
class GoldSnapshot:
    """One row of gold/feature_spec: the spec and the table versions it describes."""

    build_id: str
    spec: FeatureSpec
    created_at: datetime
    versions: Mapping[str, int | None]
    """table -> the Delta version this build read (silver) or wrote (gold); None: not built."""
    days_written: list[str] = field(default_factory=list)
    text_fingerprint: str | None = None

    def version(self, table: str) -> int:
        """The version of ``table`` this build names; raises when it names none."""
        version = self.versions.get(table)
        if version is None:
            raise GoldSnapshotError(
                f"{GOLD_FEATURE_SPEC} build {self.build_id} names no version of {table}: "
                "rebuild gold (python -m jobs.build_features --stage gold)"
            )
        return version

    # ------------------------------------------------------------------ the row's layout
    def to_arrow(self) -> pa.Table:
        unknown = set(self.versions) - set(VERSIONED_TABLES)
        if unknown:
            raise ValueError(f"no version column for {sorted(unknown)}")
        row: dict[str, object] = {
            "build_id": self.build_id,
            "spec_format_version": SPEC_FORMAT_VERSION,
            "spec_json": self.spec.to_json(),
            "created_at": self.created_at,
            "days_written": self.days_written,
            "text_fingerprint": self.text_fingerprint,
            **{version_column(t): v for t, v in self.versions.items()},
        }
        fields = [
            pa.field("build_id", pa.string()),
            pa.field("spec_format_version", pa.int32()),
            pa.field("spec_json", pa.string()),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
            pa.field("days_written", pa.list_(pa.string())),
            pa.field("text_fingerprint", pa.string()),
        ] + [pa.field(version_column(t), pa.int64()) for t in self.versions]
        return pa.Table.from_pylist([row], schema=pa.schema(fields))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> GoldSnapshot:
        return cls(
            build_id=str(row["build_id"]),
            spec=FeatureSpec.from_json(row["spec_json"]),
            created_at=row["created_at"],
            versions={
                t: None if row[version_column(t)] is None else int(row[version_column(t)])
                for t in VERSIONED_TABLES
                if version_column(t) in row
            },
            days_written=list(row.get("days_written") or []),
            text_fingerprint=row.get("text_fingerprint"),
        )

    # ------------------------------------------------------------------ finding the build
    @classmethod
    def latest(cls, lake: Lake, build_id: str | None = None) -> GoldSnapshot | None:
        """The newest build (by creation time, then build id), or None before the first;
        with ``build_id``, that build, or None when the lake does not hold it."""
        if not lake.exists(GOLD_FEATURE_SPEC):
            return None
        rows = lake.read_arrow(GOLD_FEATURE_SPEC).to_pylist()
        if build_id is not None:
            rows = [r for r in rows if r["build_id"] == build_id]
        if not rows:
            return None
        return cls.from_row(max(rows, key=lambda r: (r["created_at"], r["build_id"])))

    @classmethod
    def resolve(cls, lake: Lake) -> GoldSnapshot:
        """The newest complete build, checked to name a version of ``gold/examples``."""
        snapshot = cls.latest(lake)
        if snapshot is None:
            raise GoldSnapshotError(
                f"{GOLD_FEATURE_SPEC} holds no gold build under {lake.root}: "
                "run `python -m jobs.build_features --stage all` first"
            )
        snapshot.version(GOLD_EXAMPLES)
        return snapshot

    # ------------------------------------------------------------------ to Ray workers
    def to_json(self) -> str:
        return json.dumps(
            {
                "build_id": self.build_id,
                "spec_json": self.spec.to_json(),
                "created_at": self.created_at.isoformat(),
                "versions": dict(self.versions),
                "days_written": self.days_written,
                "text_fingerprint": self.text_fingerprint,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> GoldSnapshot:
        data = json.loads(text)
        return cls(
            build_id=data["build_id"],
            spec=FeatureSpec.from_json(data["spec_json"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            versions=data["versions"],
            days_written=data["days_written"],
            text_fingerprint=data["text_fingerprint"],
        )
