"""The config's launch-time Spark settings reach the driver JVM (issue 20), under real
spark-submit: through scripts/submit.sh, or as a one-line warning when launched plainly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtlrec.config import SparkConfig, jvm_size_bytes
from mtlrec.spark import submit_arguments

ROOT = Path(__file__).resolve().parent.parent
PROBE = "tests/spark_probe.py"
# Not spark-submit's default (1g) and not the config's (4g): only the config can give it.
ASKED = ["--set", "spark.driver_memory=1536m", "--set", "spark.master=local[1]"]
GIB = 1024**3


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MTLREC_VERBOSE"}
    environ["PYSPARK_PYTHON"] = str(ROOT / ".venv/bin/python")
    return subprocess.run(
        argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300, check=False
    )


def _probe(proc: subprocess.CompletedProcess[str]) -> dict[str, int | str]:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("{"))
    result: dict[str, int | str] = json.loads(line)
    return result


def test_submit_arguments_carry_every_launch_time_setting() -> None:
    cfg = SparkConfig(
        master="spark://127.0.0.1:7077",
        driver_memory="3g",
        executor_memory="768m",
        executor_cores=2,
        conf={"spark.driver.extraJavaOptions": "-Dx=1", "spark.sql.adaptive.enabled": "true"},
    )
    args = submit_arguments(cfg)
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--master"] == "spark://127.0.0.1:7077"
    assert pairs["--driver-memory"] == "3g"
    assert pairs["--executor-memory"] == "768m"
    assert pairs["--executor-cores"] == "2"
    confs = [v for k, v in zip(args[::2], args[1::2], strict=True) if k == "--conf"]
    assert "spark.sql.adaptive.enabled=true" in confs
    java = next(c for c in confs if c.startswith("spark.driver.extraJavaOptions="))
    assert "-Dx=1" in java and "log4j2.configurationFile" in java, "both, not one over the other"
    # A driver that may start on another machine gets no path from this one.
    remote = submit_arguments(cfg.model_copy(update={"master": "yarn"}))
    assert not any("log4j2" in a for a in remote)


def test_jvm_sizes_compare_in_bytes() -> None:
    assert jvm_size_bytes("1536m") == jvm_size_bytes("1536") == int(1.5 * GIB)
    assert jvm_size_bytes("4g") == jvm_size_bytes("4096m")
    with pytest.raises(ValueError):
        jvm_size_bytes("4 gigs")


def test_a_heap_below_sparks_floor_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """An executor under 450 MiB is refused by every executor JVM a cluster launches, which
    the cluster manager relaunches without end: refused at start, one line per heap."""
    job = [sys.executable, "-m", "jobs.build_features", "--stage", "bronze"]
    lake = ["--set", f"lake.root={tmp_path / 'lake'}", "--set", f"lake.raw_root={tmp_path}"]
    small = subprocess.run(
        [*job, *lake, "--set", "spark.executor_memory=256m"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert small.returncode == 2, small.stderr[-2000:]
    assert "spark: Value error, spark.executor_memory=256m is below the 450 MiB" in small.stderr
    assert "give at least 450m" in small.stderr and "Traceback" not in small.stderr
    assert not (tmp_path / "lake").exists()
    # Spark's own knob for its reserve moves the floor (the small-heap tests use it).
    knob = {"spark.testing.reservedMemory": "0"}
    assert SparkConfig(driver_memory="128m", executor_memory="64m", conf=knob)
    with pytest.raises(ValueError, match=r"spark\.driver_memory=300m is below"):
        SparkConfig(driver_memory="300m")


@pytest.mark.slow
def test_the_launcher_gives_the_driver_the_configs_memory_quietly() -> None:
    proc = _run(["scripts/submit.sh", PROBE, *ASKED])
    probe = _probe(proc)
    # -Xmx1536m: the heap a JVM reports is the -Xmx it was started with (1g by default).
    assert probe["max_heap_bytes"] == int(1.5 * GIB)
    assert probe["rows"] == 10
    output = proc.stdout + proc.stderr
    assert " INFO " not in output, "Spark's start-up INFO lines are off by default"
    assert "not launched as the config asks" not in output


@pytest.mark.slow
def test_plain_spark_submit_warns_once_naming_the_flag() -> None:
    proc = _run([".venv/bin/spark-submit", "--master", "local[1]", PROBE, *ASKED])
    probe = _probe(proc)
    assert probe["max_heap_bytes"] < 1.1 * GIB, "spark-submit's default heap, as launched"
    output = proc.stdout + proc.stderr
    warnings = [x for x in output.splitlines() if "not launched as the config asks" in x]
    assert len(warnings) == 1 and "--driver-memory 1536m" in warnings[0]


@pytest.mark.slow
def test_verbose_brings_sparks_info_log_back() -> None:
    proc = _run(["scripts/submit.sh", "--verbose", PROBE, *ASKED])
    assert _probe(proc)["max_heap_bytes"] == int(1.5 * GIB)
    assert " INFO " in proc.stdout + proc.stderr
