"""Which gold build a model was trained on, and whether a lake's build fits it.

A gold build is one row of ``gold/feature_spec``, read as a ``GoldSnapshot``: the
``FeatureSpec`` plus the table versions it wrote (vocabulary, text embeddings, user/item
features, examples). A model's categorical indices only mean something under the
vocabulary of its build, so the model artifact records a :class:`GoldBuildRef` (build id,
vocabulary version and content hash, text-embedding fingerprint), made by training from
the snapshot it read, and batch scoring resolves it against the lake
(:func:`resolve_build`): the model's own build when the lake has it; another build only
when its columns, vocabulary content and text fingerprint are identical (a deliberate
cross-build scoring, e.g. a rebuild on unchanged silver); anything else is refused.

Reads go through the ``Lake`` facade and pyarrow only (no Spark), in constant memory:
the vocabulary hash streams the table's files batch by batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mtlrec.errors import InputError
from mtlrec.feature_spec import FeatureSpec
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.tables import GOLD_FEATURE_SPEC, GOLD_VOCABULARY

_HASH_MODULUS = 1 << 64


class BuildMismatchError(InputError, ValueError):
    """The model's gold build does not fit the lake it is asked to score."""


@dataclass(frozen=True)
class GoldBuildRef:
    """What a model artifact records about the gold build it was trained on."""

    build_id: str
    vocabulary_version: int
    vocabulary_hash: str
    text_fingerprint: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GoldBuildRef:
        return cls(**json.loads(text))

    def describe(self) -> str:
        return f"{self.build_id} (vocabulary {self.vocabulary_hash[:12]})"


@dataclass(frozen=True)
class GoldBuild:
    """One build of the lake: its snapshot and the reference a model artifact records."""

    snapshot: GoldSnapshot
    ref: GoldBuildRef

    @property
    def spec(self) -> FeatureSpec:
        return self.snapshot.spec

    @property
    def versions(self) -> Mapping[str, int | None]:
        return self.snapshot.versions


def build_ref(lake: Lake, snapshot: GoldSnapshot) -> GoldBuildRef:
    """What an artifact trained on ``snapshot`` records (hashes the vocabulary it names)."""
    vocabulary_version = snapshot.version(GOLD_VOCABULARY)
    return GoldBuildRef(
        build_id=snapshot.build_id,
        vocabulary_version=vocabulary_version,
        vocabulary_hash=vocabulary_hash(lake, vocabulary_version),
        text_fingerprint=snapshot.text_fingerprint,
    )


def vocabulary_hash(lake: Lake, version: int) -> str:
    """An order-independent content hash of gold/vocabulary at ``version``.

    The sum (mod 2^64) of a 64-bit hash of every (feature, value, index) row plus the row
    count: equal for equal contents whatever the file layout, computed file by file and
    batch by batch so memory stays flat in the vocabulary's size (users x features).
    """
    total, rows = 0, 0
    for uri in lake.snapshot_files(GOLD_VOCABULARY, version=version):
        filesystem, path = lake.storage.filesystem_for(uri)
        parquet = pq.ParquetFile(path, filesystem=filesystem)
        for batch in parquet.iter_batches(columns=["feature", "value", "index"]):
            frame = batch.to_pandas()
            hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64)
            total = (total + int(hashed.sum(dtype=np.uint64))) % _HASH_MODULUS
            rows += len(frame)
    return f"{rows:x}-{total:016x}"


def read_build(lake: Lake, build_id: str | None = None) -> GoldBuild | None:
    """The build ``build_id`` (None: the newest) of the lake, or None when absent."""
    snapshot = GoldSnapshot.latest(lake, build_id)
    return None if snapshot is None else GoldBuild(snapshot, build_ref(lake, snapshot))


def _differences(model_spec: FeatureSpec, model: GoldBuildRef | None, lake: GoldBuild) -> list[str]:
    """What differs between the model's build and the lake's (empty: they fit)."""
    found = []
    if model_spec.feature_columns() != lake.spec.feature_columns():
        found.append("feature columns")
    sizes = {f.name: f.vocab_size for f in model_spec.categorical}
    if sizes != {f.name: f.vocab_size for f in lake.spec.categorical}:
        found.append("vocabulary sizes")
    if model is None:
        # No recorded build (an artifact older than the record): the spec must be the same.
        if model_spec != lake.spec:
            found.append("feature spec")
        return found
    if model.vocabulary_hash != lake.ref.vocabulary_hash:
        found.append("vocabulary content")
    if model.text_fingerprint != lake.ref.text_fingerprint:
        found.append("text-embedding fingerprint")
    return found


def resolve_build(lake: Lake, model_spec: FeatureSpec, model: GoldBuildRef | None) -> GoldBuild:
    """The lake's build to score a model with; raises ``BuildMismatchError`` when none fits.

    The model's own build when the lake holds it (its vocabulary version, exactly);
    otherwise the lake's newest build, only if its columns, vocabulary content and text
    fingerprint equal the model's.
    """
    own = read_build(lake, model.build_id) if model is not None else None
    if own is not None:
        return own
    newest = read_build(lake)
    if newest is None:
        raise BuildMismatchError(
            f"{GOLD_FEATURE_SPEC} holds no build under {lake.root}: "
            "run jobs/build_features.py first"
        )
    differences = _differences(model_spec, model, newest)
    if differences:
        mine = model.describe() if model is not None else "an unrecorded gold build"
        raise BuildMismatchError(
            f"the model was trained on gold build {mine}, the lake's build is "
            f"{newest.ref.describe()}: {', '.join(differences)} differ; score with a model "
            f"trained on {newest.ref.build_id} (or the lake it was trained on)"
        )
    return newest
