"""The Spark session factory every job uses.

``local[*]`` from the config by default; under ``spark-submit`` the submitted
master and conf win (the config only fills in what was not submitted). Local
sessions bind to 127.0.0.1 and run without the UI unless asked, so nothing
listens beyond localhost by default.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from mtlrec.config import LakeConfig, SparkConfig
from mtlrec.errors import InputError
from mtlrec.storage import LakeStorage


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway to the Python driver."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


class JavaNotFoundError(InputError, RuntimeError):
    """Spark needs a Java runtime (>= 17) and none was found."""


def _check_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").exists():
        return
    if shutil.which("java") is None:
        raise JavaNotFoundError(
            "Java >= 17 is required by Spark and none was found (no JAVA_HOME, no java on "
            "PATH); on Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless"
        )


def _submitted_conf() -> SparkConf:
    """The conf spark-submit passed to the JVM (its system properties).

    SparkConf only reads the JVM once Python is connected to it, so connect first.
    """
    SparkContext._ensure_initialized()
    return SparkConf()


def get_spark(cfg: SparkConfig, lake: LakeConfig | None = None) -> SparkSession:
    """The session for a job; ``lake`` adds the object-store settings its root needs."""
    submitted = launched_by_spark_submit()
    if not submitted:
        _check_java()
    builder = SparkSession.builder.appName(cfg.app_name)
    defaults = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.parquet.compression.codec": "snappy",
        # INT96 timestamps are a legacy Spark-only encoding; delta-rs, DuckDB and Petastorm
        # read microsecond timestamps.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "true",
    }
    submitted_conf = _submitted_conf() if submitted else None
    master = submitted_conf.get("spark.master", "") if submitted_conf else cfg.master
    if not submitted:
        builder = builder.master(cfg.master)
        defaults["spark.driver.memory"] = cfg.driver_memory
        # Python workers (pandas UDFs) must run this interpreter, the venv with pandas and
        # torch; PySpark reads the worker executable from PYSPARK_PYTHON, else `python3`.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        # A local driver listens on loopback only, submitted or not.
        defaults.update({"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"})
    if lake is not None:
        defaults.update(LakeStorage.from_config(lake).spark_conf())
    defaults.update(cfg.conf)
    # Under spark-submit the JVM already holds the submitted conf (as system properties,
    # which SparkConf loads): it wins over the config file.
    for key, value in defaults.items():
        if submitted_conf is None or not submitted_conf.contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def delta_jars_available(spark: SparkSession) -> bool:
    """True when the Delta Lake JVM classes are on the classpath (format('delta') works)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    try:
        jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
    except Exception:
        return False
    return True
