"""Security: no code runs from a model file, nothing escapes its root, servers stay local,
credentials stay out of reprs and logs.

The training run's own checks (no credential in any file a run or its Ray session
writes; no listener beyond localhost) are in ``test_training_faults.py``, which owns
the run.
"""

from __future__ import annotations

import ast
import logging
import os
import pickle
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
import torch
from pyspark.sql import SparkSession

from jobs.config import PipelineConfig
from mtl_model.artifact import ArtifactError, load_artifact
from mtl_model.checkpoint import STATE_FILE, TrainState
from mtl_model.ray_train import newest_readable_checkpoint
from mtlrec.config import LakeConfig, RayConfig
from mtlrec.lake import Lake, LakeError
from mtlrec.storage import redact
from reliability.harness import ROOT, is_loopback, job_command, run_job

SOURCE_DIRS = ("mtlrec", "mtl_model", "jobs", "feature_engineering", "benchmarks")
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _malicious_file(path: Path, marker: Path, **fields: object) -> Path:
    torch.save({**fields, "payload": _Payload(marker)}, path)
    return path


@pytest.mark.timeout(60)
def test_the_payload_is_live_when_loaded_without_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _malicious_file(tmp_path / "model.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.is_dir(), "the payload must run under a plain load, else the tests prove nothing"


@pytest.mark.timeout(60)
def test_load_artifact_refuses_a_pickle_payload(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _malicious_file(tmp_path / "model.pt", marker, format_version=1)
    # weights_only refuses the payload; the loader reports it as one line (ArtifactError)
    with pytest.raises(ArtifactError, match="not a weights-only torch file"):
        load_artifact(path)
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_checkpoint_loader_refuses_a_pickle_payload_and_resume_skips_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_log = logging.getLogger("mtlrec.train")  # mtlrec loggers do not propagate
    train_log.addHandler(caplog.handler)
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "run" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    _malicious_file(checkpoint / STATE_FILE, marker, epoch=0)
    with pytest.raises(pickle.UnpicklingError):
        TrainState.load(checkpoint)
    try:
        assert newest_readable_checkpoint(tmp_path / "run") is None
    finally:
        train_log.removeHandler(caplog.handler)
    assert f"checkpoint {checkpoint} is unreadable" in caplog.text
    assert not marker.exists()


def _torch_load_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, has weights_only=True) for every ``torch.load(...)`` call in ``path``."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            )
            calls.append((node.lineno, safe))
    return calls


def test_every_torch_load_in_the_product_uses_weights_only() -> None:
    found: dict[str, list[tuple[int, bool]]] = {}
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            calls = _torch_load_calls(path)
            if calls:
                found[str(path.relative_to(ROOT))] = calls
    assert found, "the scan found no torch.load at all"
    unsafe = {p: [line for line, safe in calls if not safe] for p, calls in found.items()}
    assert not {p: lines for p, lines in unsafe.items() if lines}, unsafe


# ---------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "bronze/../../etc",
        "bronze/events/../../../x",
        "/etc/passwd",
        "bronze//events",
        "bronze/events/",
        "bronze\\..\\x",
        "bronze/%2e%2e",
        "bronze/ev ents",
        "bronze/events\n",
        "bronze/events\x00",
        "gold/Examples",
        "gold/ｅxamples",
        "s3://bucket/gold/x",
        "bronze/.hidden",
        "",
    ],
)
def test_table_names_that_could_escape_the_lake_are_refused(name: str, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(LakeError, match="invalid table name"):
        lake.table_uri(name)


HOSTILE_VALUES = ["../../../escaped", "/abs", "a/b", "..", "x=y", "50%"]


def _hostile_table(root: Path) -> Lake:
    lake = Lake(str(root))
    data = pa.table({"id": list(range(len(HOSTILE_VALUES))), "dt": HOSTILE_VALUES})
    lake.write_arrow(data, "bronze/hostile", partition_by=["dt"])
    return lake


@pytest.mark.timeout(60)
def test_hostile_partition_values_write_inside_the_table(tmp_path: Path) -> None:
    lake = _hostile_table(tmp_path / "lake")
    table_dir = Path(lake.table_uri("bronze/hostile")).resolve()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > len(HOSTILE_VALUES)  # data files plus the log
    for path in files:
        assert path.resolve().is_relative_to(table_dir), path
    assert {p["dt"] for p in lake.snapshot_partitions("bronze/hostile")} == set(HOSTILE_VALUES)


@pytest.mark.timeout(60)
def test_hostile_partition_values_read_back_exactly(tmp_path: Path) -> None:
    lake = _hostile_table(tmp_path / "lake")
    back = lake.read_arrow("bronze/hostile").sort_by("id")
    assert back.column("dt").to_pylist() == HOSTILE_VALUES


@pytest.mark.spark
@pytest.mark.timeout(120)
def test_hostile_partition_values_read_back_exactly_through_spark(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _hostile_table(tmp_path / "lake")
    rows = lake.read_table(spark, "bronze/hostile").orderBy("id").collect()
    assert [r["dt"] for r in rows] == HOSTILE_VALUES


@pytest.mark.timeout(60)
def test_hostile_partitions_are_replaced_exactly(tmp_path: Path) -> None:
    lake = _hostile_table(tmp_path / "lake")
    again = pa.table({"id": [100, 101], "dt": HOSTILE_VALUES[:2]})
    lake.write_arrow(again, "bronze/hostile", mode="overwrite", replace_partitions="written")
    back = lake.read_arrow("bronze/hostile").sort_by("id").to_pylist()
    kept = [{"id": i, "dt": v} for i, v in enumerate(HOSTILE_VALUES) if i >= 2]
    replaced = [{"id": 100, "dt": HOSTILE_VALUES[0]}, {"id": 101, "dt": HOSTILE_VALUES[1]}]
    assert back == [*kept, *replaced]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args",
    [("--set", "run.name=../../escaped"), ("--resume", "../escaped"), ("--resume", "/tmp")],
)
def test_run_names_cannot_point_outside_the_runs_directory(
    args: tuple[str, str], tmp_path: Path
) -> None:
    runs = tmp_path / "a" / "runs"
    command = job_command("train", *args, overrides=[f"run.storage_path={runs}"])
    run = run_job(command, timeout=100, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "invalid run name" in run.stderr
    assert not any(tmp_path.rglob("*")), "nothing may be written"


# ---------------------------------------------------------------------- servers
def test_ray_defaults_start_no_dashboard_and_bind_it_to_localhost() -> None:
    defaults = RayConfig()
    assert defaults.address is None and defaults.include_dashboard is False
    assert defaults.dashboard_host == "127.0.0.1"
    assert PipelineConfig().ray == defaults, "the local default config keeps these defaults"


@pytest.mark.spark
@pytest.mark.timeout(120)
def test_spark_driver_binds_to_localhost_only(spark: SparkSession) -> None:
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert conf.get("spark.ui.enabled") == "false"
    spark.range(10).count()  # make sure the block manager and RPC servers are up
    gateway = spark.sparkContext._gateway
    assert gateway is not None
    jvm = psutil.Process(gateway.proc.pid)
    listening = {
        (conn.laddr.ip, conn.laddr.port)
        for proc in [jvm, *jvm.children(recursive=True)]
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening, "the live JVM listens somewhere (driver RPC, block manager)"
    public = sorted(addr for addr in listening if not is_loopback(addr[0]))
    assert not public, f"the Spark JVM listens beyond localhost: {public}"


# ---------------------------------------------------------------------- credentials
def test_config_reprs_and_redaction_hide_credentials() -> None:
    options = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET + "tok"}
    config = PipelineConfig(lake=LakeConfig(root="s3://bucket/lake", storage_options=options))
    for text in (repr(config), str(config), repr(config.lake), f"{config.lake}"):
        assert SECRET not in text
    assert config.lake.storage_options == options, "hidden, not dropped"
    line = (
        f"AWS_SECRET_ACCESS_KEY={SECRET} 'aws_session_token': '{SECRET}' "
        f"spark.hadoop.fs.s3a.secret.key={SECRET} s3://AKIA:{SECRET}@host/x"
    )
    assert SECRET not in redact(line)
    assert SECRET not in redact(f"opaque {SECRET} in a message", [SECRET])
