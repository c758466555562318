#!/usr/bin/env bash
# Launch a Spark job with the settings its config holds, so the config is the one place
# they live. spark-submit starts the driver JVM before the job reads its config, so
# settings fixed at JVM start (driver memory above all) must be spark-submit flags:
#
#   scripts/submit.sh [--verbose] [SPARK-SUBMIT OPTIONS] JOB.py [JOB ARGUMENTS]
#   scripts/submit.sh jobs/build_features.py --config cluster_configs/local.yaml --stage all
#   scripts/submit.sh --master spark://127.0.0.1:7077 jobs/score_users.py --model runs/demo/model.pt
#
# From the job's --config/--set it passes spark.master, spark.driver_memory,
# spark.executor_memory, spark.executor_cores and every spark.conf entry (`--conf k=v`),
# plus the quiet log4j2 file (cluster_configs/log4j2.properties). Options given before
# JOB.py come after those and win (spark-submit keeps the last value). --verbose (or
# MTLREC_VERBOSE=1) keeps Spark's INFO log and progress bars.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"

options=()
while (($#)) && [[ "$1" != *.py ]]; do
  if [[ "$1" == --verbose ]]; then
    export MTLREC_VERBOSE=1
  else
    options+=("$1")
  fi
  shift
done
if (($# == 0)); then
  echo "usage: scripts/submit.sh [--verbose] [SPARK-SUBMIT OPTIONS] JOB.py [JOB ARGUMENTS]" >&2
  exit 2
fi
job="$1"
shift

# A bad config stops here, with the job's one-line message and exit 2.
flags="$(cd "$ROOT" && "$PY" scripts/submit_args.py "$@" | tr '\0' '\n')"
mapfile -t launch <<<"$flags"
# Python workers (pandas UDFs) on the driver and the executors run the project's venv.
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
exec "$ROOT/.venv/bin/spark-submit" "${launch[@]}" "${options[@]}" "$job" "$@"
