"""A minimal job for tests/test_spark_launch.py: what its driver JVM got, as one JSON line.

spark-submit tests/spark_probe.py --config FILE [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# spark-submit runs this file as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.config import job_config
from mtlrec.config import add_config_arguments
from mtlrec.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = job_config(parser.parse_args(), "spark_probe")
    spark = get_spark(cfg.spark)
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    conf = spark.sparkContext.getConf()
    print(
        json.dumps(
            {
                "max_heap_bytes": jvm.java.lang.Runtime.getRuntime().maxMemory(),
                "driver_memory": conf.get("spark.driver.memory", None),
                "rows": spark.range(10).count(),
            }
        )
    )
    spark.stop()


if __name__ == "__main__":
    main()
