"""The Spark session factory every job uses, and the spark-submit flags a config implies.

``local[*]`` from the config by default; under ``spark-submit`` the submitted
master and conf win (the config only fills in what was not submitted). Local
sessions bind to 127.0.0.1 and run without the UI unless asked, so nothing
listens beyond localhost by default.

Some settings are fixed when the driver JVM starts (its heap above all), and
spark-submit starts that JVM before the job reads its config. So the config's
launch-time settings reach spark-submit as flags: ``scripts/submit.sh`` passes
``submit_arguments(cfg)``, and a job launched by plain spark-submit whose JVM
differs from its config says so in one line at start (``launch_mismatches``).

Quiet by default: the driver logs through ``cluster_configs/log4j2.properties``
(Spark at WARN, no progress bars), so a user reads the pipeline's own lines.
``MTLREC_VERBOSE=1`` (``scripts/submit.sh --verbose``) brings Spark's INFO back.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from mtlrec.config import LakeConfig, SparkConfig, jvm_size_bytes
from mtlrec.errors import InputError, JobError, ResourceError
from mtlrec.log import get_logger
from mtlrec.storage import LakeStorage

LOG4J2_FILE = Path(__file__).resolve().parent.parent / "cluster_configs" / "log4j2.properties"
# spark-submit's default driver heap, what a JVM started without --driver-memory has.
SPARK_DEFAULT_DRIVER_MEMORY = "1g"
# Settings read once, when the driver JVM starts; a session's conf cannot change them.
DRIVER_LAUNCH_CONF = (
    "spark.driver.memory",
    "spark.driver.extraJavaOptions",
    "spark.driver.extraClassPath",
    "spark.driver.extraLibraryPath",
    "spark.jars",
    "spark.jars.packages",
)
_LOOPBACK_MASTER = re.compile(r"spark://(127\.0\.0\.1|localhost):")
# An executor JVM that exited with Spark's status for an OutOfMemoryError (SparkExitCode.OOM).
_EXIT_52 = r"exit(?:ed)?(?: with)? (?:code|status):? 52\b[^\n]*"
# How a memory failure reaches the Python driver: a task's or the driver's Java heap
# (in the error's text, Java stack included), Spark's own accounting, an executor's exit
# status 52, or a Python worker's MemoryError.
_OUT_OF_MEMORY = re.compile(
    r"java\.lang\.OutOfMemoryError[^\n]*|SparkOutOfMemoryError[^\n]*"
    rf"|{_EXIT_52}|\bMemoryError\b[^\n]*"
)
# How cluster managers report an executor they removed for memory: status 52 (standalone
# and YARN), YARN's and Kubernetes' container memory kills.
_EXECUTOR_OUT_OF_MEMORY = re.compile(
    rf"{_EXIT_52}|exceeding \w* ?memory limits[^\n]*|possible container OOM[^\n]*"
    r"|OOMKilled[^\n]*"
)
# A job that failed on a lost shuffle output: an executor died, and the cluster manager's
# word on why (the removal reason above) can reach the driver just after the job failed.
_LOST_SHUFFLE_OUTPUT = re.compile(r"\b(?:Metadata)?FetchFailedException\b")
EXECUTOR_LOSS_WAIT_S = 15.0
"""How long a job that failed on a lost shuffle output waits for the executor's removal."""
_log = get_logger("spark")


def verbose() -> bool:
    """``MTLREC_VERBOSE=1``: Spark's INFO log and progress bars, as Spark ships them."""
    return os.environ.get("MTLREC_VERBOSE", "") not in ("", "0")


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


def on_this_machine(master: str) -> bool:
    """``local[...]``, or a standalone master on loopback (the project's local cluster)."""
    return master.startswith("local") or _LOOPBACK_MASTER.match(master) is not None


def launch_conf(cfg: SparkConfig) -> dict[str, str]:
    """The config's settings that spark-submit must be given, as ``spark.*`` properties.

    Driver memory and the log4j2 file only take effect when the driver JVM starts;
    master, executor memory and cores are passed too, so the config is the one place
    they live and ``spark-submit --verbose`` shows what a job was launched with.
    """
    conf = {
        "spark.master": cfg.master,
        "spark.driver.memory": cfg.driver_memory,
        "spark.executor.memory": cfg.executor_memory,
        "spark.executor.cores": str(cfg.executor_cores),
        **cfg.conf,
    }
    if on_this_machine(cfg.master) and not verbose():
        # The file is on this machine; a cluster-mode driver elsewhere keeps its own logging.
        options = f"-Dlog4j2.configurationFile=file:{LOG4J2_FILE}"
        extra = conf.get("spark.driver.extraJavaOptions")
        conf["spark.driver.extraJavaOptions"] = f"{extra} {options}" if extra else options
    return conf


def submit_arguments(cfg: SparkConfig) -> list[str]:
    """spark-submit flags for the config: ``--master``, ``--driver-memory``, ``--conf k=v``."""
    conf = launch_conf(cfg)
    flags = {
        "spark.master": "--master",
        "spark.driver.memory": "--driver-memory",
        "spark.executor.memory": "--executor-memory",
        "spark.executor.cores": "--executor-cores",
    }
    args: list[str] = []
    for key, value in conf.items():
        args += [flags[key], value] if key in flags else ["--conf", f"{key}={value}"]
    return args


def launch_mismatches(cfg: SparkConfig, submitted: SparkConf) -> list[str]:
    """The spark-submit flags this driver JVM lacks to match the config, e.g.
    ``--driver-memory 4g``; empty when the JVM was launched as the config asks."""
    wanted = launch_conf(cfg)
    missing = []
    heap = submitted.get("spark.driver.memory", SPARK_DEFAULT_DRIVER_MEMORY)
    if jvm_size_bytes(heap) != jvm_size_bytes(cfg.driver_memory):
        missing.append(f"--driver-memory {cfg.driver_memory}")
    for key in DRIVER_LAUNCH_CONF[1:]:
        # The log4j2 file is a convenience, not a setting worth a warning.
        if key in cfg.conf and submitted.get(key, "") != wanted[key]:
            missing.append(f"--conf {key}={wanted[key]}")
    return missing


class OutOfMemoryStageError(ResourceError, RuntimeError):
    """A stage ran out of memory; the message says which settings to raise."""


def _out_of_memory_cause(exc: BaseException) -> str | None:
    """The line saying the JVM or a worker ran out of memory, from the exception chain;
    "the JVM stopped answering" when the driver JVM died (Py4J lost its connection)."""
    seen: BaseException | None = exc
    while seen is not None:
        match = _OUT_OF_MEMORY.search(str(seen))
        if match:
            return match.group(0).strip()[:200]
        if type(seen).__name__ == "Py4JNetworkError" or isinstance(seen, ConnectionError):
            return "the Spark driver JVM stopped answering (most often: it ran out of memory)"
        seen = seen.__cause__ or seen.__context__
    return None


def _executor_out_of_memory(context: SparkContext, wait_s: float = 0.0) -> str | None:
    """Why a cluster executor was removed, when it was for memory, from the driver's status
    store (kept with the UI off; dead executors up to ``spark.ui.retainedDeadExecutors``);
    asked again for up to ``wait_s`` seconds while no such removal is recorded.

    On a cluster an executor whose task runs out of heap exits (code 52); its tasks and
    shuffle outputs are lost, Spark retries the stage, and the job then fails on a lost
    shuffle output (``MetadataFetchFailedException``) whose message names no memory at all.
    The job can fail before the worker's report of the exit arrives (seen with one stage
    attempt: the removal was logged in the same second, after the job's error).
    """
    deadline = time.monotonic() + wait_s
    while True:
        cause = _removed_for_memory(context)
        if cause is not None or time.monotonic() >= deadline:
            return cause
        time.sleep(0.5)


def _removed_for_memory(context: SparkContext) -> str | None:
    try:
        executors = context._jsc.sc().statusStore().executorList(False)
        for i in range(executors.size()):
            executor = executors.apply(i)
            reason = executor.removeReason()
            if reason.isDefined():
                match = _EXECUTOR_OUT_OF_MEMORY.search(str(reason.get()))
                if match:
                    return f"executor {executor.id()} lost: {match.group(0).strip()[:160]}"
    except Exception:  # a JVM that died cannot be asked: no cause from here
        return None
    return None


@contextmanager
def memory_failures_named(stage: str, cfg: SparkConfig) -> Iterator[None]:
    """Turn a memory failure inside ``stage`` into one ``OutOfMemoryStageError`` line
    naming the stage and the settings to raise, instead of a Java stack."""
    try:
        yield
    except Exception as exc:
        context = SparkContext._active_spark_context
        cause = _out_of_memory_cause(exc)
        on_executor = False
        # A job's own error (a failed reconciliation, a bad input) stays itself, even when
        # an executor died of memory earlier in the job and Spark recovered from it.
        if cause is None and context is not None and not isinstance(exc, JobError):
            lost_shuffle = _LOST_SHUFFLE_OUTPUT.search(str(exc)) is not None
            cause = _executor_out_of_memory(context, EXECUTOR_LOSS_WAIT_S if lost_shuffle else 0)
            on_executor = cause is not None
        if cause is None:
            raise
        # Stop Spark first: the job's other tasks are being cancelled, and their warnings
        # would otherwise follow the one line the user must read last.
        if context is not None:
            with suppress(Exception):  # a JVM that died cannot be stopped: nothing to do
                context.stop()
        settings = (
            f"spark.driver_memory={cfg.driver_memory}, spark.executor_memory="
            f"{cfg.executor_memory}, spark.shuffle_partitions={cfg.shuffle_partitions}"
        )
        advice = (
            "raise spark.executor_memory (each executor holds its tasks' data)"
            if on_executor
            else "raise spark.driver_memory (a local[*] master runs every task in the driver "
            "JVM) or, on a cluster, spark.executor_memory"
        )
        raise OutOfMemoryStageError(
            f"{stage} ran out of memory ({cause}) with {settings}: {advice}; more "
            "spark.shuffle_partitions make each task hold less"
        ) from None


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
        # The pipeline logs a line per stage; Spark's bars would interleave with it.
        "spark.ui.showConsoleProgress": "true" if verbose() else "false",
    }
    submitted_conf = _submitted_conf() if submitted else None
    master = submitted_conf.get("spark.master", "") if submitted_conf else cfg.master
    if submitted_conf is not None:
        missing = launch_mismatches(cfg, submitted_conf)
        if missing:
            _log.warning(
                "this driver JVM was not launched as the config asks (spark.driver_memory=%s, "
                "heap now %s): pass %s to spark-submit, or launch with scripts/submit.sh",
                cfg.driver_memory,
                submitted_conf.get("spark.driver.memory", SPARK_DEFAULT_DRIVER_MEMORY),
                " ".join(missing),
            )
    else:
        builder = builder.master(cfg.master)
        # Python workers (pandas UDFs) must run this interpreter, the venv with pandas and
        # torch; PySpark reads the worker executable from PYSPARK_PYTHON, else `python3`.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        # In local mode tasks run inside the driver JVM, and by default a task's
        # OutOfMemoryError makes Spark exit that JVM (status 52) before the Python driver
        # hears of it. Failing just the task lets the job report it in one line.
        defaults["spark.executor.killOnFatalError.depth"] = "0"
    if on_this_machine(master):
        # A local driver, or one whose cluster is on this machine's loopback (the project's
        # local cluster), listens on loopback only, submitted or not.
        defaults.update({"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"})
    if lake is not None:
        defaults.update(LakeStorage.from_config(lake).spark_conf())
    # Executor sizes, the config's conf, and (when this process starts the JVM) driver
    # memory and the log4j2 file; the master was set above.
    defaults.update({k: v for k, v in launch_conf(cfg).items() if k != "spark.master"})
    # Under spark-submit the JVM already holds the submitted conf (as system properties,
    # which SparkConf loads): it wins over the config file.
    for key, value in defaults.items():
        if submitted_conf is None or not submitted_conf.contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # A JVM started without the log4j2 file (plain spark-submit) turns quiet from here on.
    spark.sparkContext.setLogLevel("INFO" if verbose() else "WARN")
    return spark


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str | None]) -> Iterator[None]:
    """Set SQL settings for the actions inside the block, then restore the previous values.

    A value of None leaves that setting as it is (so a caller can pass an optional one).
    """
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        if value is not None:
            spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def delta_jars_available(spark: SparkSession) -> bool:
    """True when the Delta Lake JVM classes are on the classpath (format('delta') works)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    try:
        jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
    except Exception:
        return False
    return True
