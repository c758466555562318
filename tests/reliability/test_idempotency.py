"""Idempotency, and a real job killed at a random moment.

On one tiny generated log (``jobs.generate_logs``):

1. ``generate_logs`` run twice writes byte-identical raw logs;
2. ``build_features --stage all`` (run A) builds every bronze, silver and gold table;
3. ``build_features --stage bronze`` is SIGKILLed (with its Spark JVM) at a moment drawn
   from a seeded RNG within the span run A's bronze stage took: every table must still
   hold run A's content (whichever commits the killed run made replace partitions with
   identical rows);
4. ``build_features --stage all`` again (run B) succeeds on top of the debris and leaves
   every table with content identical to run A's (a hash over sorted rows, via
   ``Lake.read_arrow``): the job is idempotent;
5. every file the snapshots do not reference (removed by an overwrite, or orphaned by the
   kill) is garbled, and every table still reads back identically.

``gold/feature_spec`` is an append-only log of builds; its latest spec is compared,
without the build's id, time, text-cache key and the table versions it records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtlrec.lake import Lake
from reliability.harness import (
    ROOT,
    SMALL_SPARK,
    JobRun,
    job_command,
    job_env,
    kill_group,
    run_job,
    table_fingerprint,
    wait_for,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SEED = 20261001
SPEC_TABLE = "gold/feature_spec"
SPEC_VOLATILE = ("build_id", "created_at", "text_fingerprint")
"""Build metadata: the text fingerprint is a cache key over the silver *versions* a build
read, so it changes whenever silver is rewritten, even with identical rows."""
STAGE_TIMEOUT = 900


def _overrides(root: Path) -> list[str]:
    return [
        f"lake.root={root / 'lake'}",
        f"lake.raw_root={root / 'raw'}",
        f"generator.truth_root={root / 'truth'}",
        "generator.num_users=40",
        "generator.num_items=30",
        "generator.num_days=4",
        "generator.processes=1",
        *SMALL_SPARK,
    ]


def _tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _tables(lake_root: Path) -> list[str]:
    logs = lake_root.glob("*/*/_delta_log")
    return sorted(f"{d.parent.parent.name}/{d.parent.name}" for d in logs)


def _latest_spec(lake: Lake) -> dict[str, object]:
    rows = lake.read_arrow(SPEC_TABLE).to_pylist()
    latest = max(rows, key=lambda row: str(row["created_at"]))
    return {
        k: v for k, v in latest.items() if k not in SPEC_VOLATILE and not k.endswith("_version")
    }


def _content(lake: Lake) -> dict[str, object]:
    """Every table's content fingerprint (the spec log: its latest build's spec)."""
    names = _tables(Path(lake.root))
    return {
        name: _latest_spec(lake) if name == SPEC_TABLE else table_fingerprint(lake, name)
        for name in names
    }


def _garble_unreferenced(lake: Lake) -> int:
    garbled = 0
    for name in _tables(Path(lake.root)):
        referenced = {Path(u.removeprefix("file://")) for u in lake.snapshot_files(name)}
        for path in Path(lake.table_uri(name)).rglob("*.parquet"):
            if path not in referenced:
                path.write_bytes(b"GARBLED\n" * 16)
                garbled += 1
    return garbled


def _stage_span(log: str, start: str, end: str) -> float:
    """Seconds between the log lines containing ``start`` and ``end`` (HH:MM:SS stamps)."""
    stamps = {}
    for line in log.splitlines():
        for key in (start, end):
            match = re.match(r"^(\d\d:\d\d:\d\d) ", line)
            if key in line and match and key not in stamps:
                stamps[key] = dt.datetime.strptime(match.group(1), "%H:%M:%S")
    return max(1.0, (stamps[end] - stamps[start]).total_seconds())


@dataclass(frozen=True)
class Pipeline:
    root: Path
    raw_runs: tuple[dict[str, str], dict[str, str]]
    run_a: JobRun
    content_a: dict[str, object]
    versions_a: dict[str, int]
    killed_after_s: float
    killed_stderr: str
    content_after_kill: dict[str, object]
    run_b: JobRun
    content_b: dict[str, object]
    content_after_garbling: dict[str, object]
    garbled: int


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("idem")
    overrides = _overrides(root)
    raw_digests = []
    for extra in ((), ("--overwrite",)):
        gen = run_job(job_command("generate_logs", *extra, overrides=overrides), timeout=300)
        assert gen.returncode == 0, gen.stderr[-3000:]
        raw_digests.append(_tree_digest(root / "raw"))

    features = job_command("build_features", "--stage", "all", overrides=overrides)
    run_a = run_job(features, timeout=STAGE_TIMEOUT, env=job_env())
    assert run_a.returncode == 0, run_a.stderr[-5000:]
    lake = Lake(str(root / "lake"))
    content_a = _content(lake)
    versions_a = {name: lake.version(name) for name in _tables(root / "lake")}

    # The kill: a seeded moment inside the span run A's bronze stage took.
    span = _stage_span(run_a.stderr, "INFO mtlrec.bronze: bronze:", "stage=bronze")
    delay = random.Random(SEED).uniform(0.05, 0.8) * span
    log = root / "killed.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            job_command("build_features", "--stage", "bronze", overrides=overrides),
            cwd=ROOT,
            env=job_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "bronze: " in log.read_text(errors="replace"), 300, "bronze start", proc)
        time.sleep(delay)
        assert proc.poll() is None, "the bronze re-run finished before its kill"
    finally:
        kill_group(proc)
    content_after_kill = _content(Lake(str(root / "lake")))

    run_b = run_job(features, timeout=STAGE_TIMEOUT, env=job_env())
    assert run_b.returncode == 0, run_b.stderr[-5000:]
    lake = Lake(str(root / "lake"))
    content_b = _content(lake)
    garbled = _garble_unreferenced(lake)
    return Pipeline(
        root,
        (raw_digests[0], raw_digests[1]),
        run_a,
        content_a,
        versions_a,
        delay,
        log.read_text(errors="replace"),
        content_after_kill,
        run_b,
        content_b,
        _content(lake),
        garbled,
    )


@pytest.mark.timeout(3 * STAGE_TIMEOUT)
def test_generate_logs_twice_writes_identical_bytes(pipeline: Pipeline) -> None:
    first, second = pipeline.raw_runs
    assert first and any(name.startswith("events/") for name in first)
    assert first == second


@pytest.mark.timeout(3 * STAGE_TIMEOUT)
def test_all_layers_were_built(pipeline: Pipeline) -> None:
    tables = set(pipeline.content_a)
    assert {"bronze/events", "bronze/quarantine", "silver/events", "gold/examples"} <= tables
    assert SPEC_TABLE in tables


@pytest.mark.timeout(3 * STAGE_TIMEOUT)
def test_a_randomly_killed_bronze_run_leaves_every_table_as_it_was(pipeline: Pipeline) -> None:
    assert "bronze: " in pipeline.killed_stderr
    assert "bronze reconciliation OK" not in pipeline.killed_stderr, "killed after finishing"
    assert pipeline.content_after_kill == pipeline.content_a


@pytest.mark.timeout(3 * STAGE_TIMEOUT)
def test_build_features_twice_leaves_identical_tables(pipeline: Pipeline) -> None:
    before, after = pipeline.content_a, pipeline.content_b
    changed = sorted(name for name in before if after.get(name) != before[name])
    spec_a, spec_b = before[SPEC_TABLE], after.get(SPEC_TABLE)
    assert isinstance(spec_a, dict) and isinstance(spec_b, dict)
    spec_fields = sorted(k for k in spec_a if spec_a[k] != spec_b.get(k))
    assert not changed, f"changed on an identical re-run: {changed}; spec fields {spec_fields}"
    assert set(pipeline.content_b) == set(pipeline.content_a)
    lake = Lake(str(pipeline.root / "lake"))
    rewritten = ("bronze/events", "silver/events", "gold/examples")
    assert all(lake.version(n) > pipeline.versions_a[n] for n in rewritten), "run B wrote"


@pytest.mark.timeout(3 * STAGE_TIMEOUT)
def test_no_reader_opens_a_removed_or_orphaned_file(pipeline: Pipeline) -> None:
    assert pipeline.garbled > 0, "re-runs left replaced files to garble"
    assert pipeline.content_after_garbling == pipeline.content_b
