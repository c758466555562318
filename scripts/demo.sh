#!/usr/bin/env bash
# The whole pipeline on the embedded synthetic log, on this machine:
# generate raw logs -> bronze/silver/gold Delta tables -> Ray training -> batch scoring -> report.
# Extra arguments go to every job (e.g. --set generator.num_users=500). Re-running starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export RAY_DISABLE_USAGE_STATS=1
CONFIG="${MTLREC_CONFIG:-cluster_configs/local.yaml}"
# The Spark jobs go through the launcher: master, driver memory and the quiet log4j2 file
# come from the config (MTLREC_VERBOSE=1 brings Spark's INFO log back).
SUBMIT=(scripts/submit.sh)

echo "== 1/5 generate the synthetic log"
"$PY" -m jobs.generate_logs --config "$CONFIG" --overwrite "$@"
echo "== 2/5 feature jobs: bronze, silver, gold"
"${SUBMIT[@]}" jobs/build_features.py --stage all --config "$CONFIG" "$@"
echo "== 3/5 train (Ray Train + Petastorm)"
rm -rf runs/demo  # a run name that exists would be resumed, not retrained
"$PY" -m jobs.train --config "$CONFIG" --set run.name=demo "$@"
echo "== 4/5 score users"
# The demo scores the held-out test day so the report can measure recommendations against
# what users really bought; in production the default date (the day after the data) is used.
TEST_DAY="$("$PY" scripts/lake_info.py test-day --config "$CONFIG" "$@")"
"${SUBMIT[@]}" jobs/score_users.py --config "$CONFIG" --model runs/demo/model.pt \
  --date "$TEST_DAY" "$@"
echo "== 5/5 offline evaluation report"
"$PY" -m jobs.report --config "$CONFIG" --run runs/demo "$@"
echo
echo "== done"
echo "recommendations: $("$PY" scripts/lake_info.py table-uri gold/recommendations --config "$CONFIG" "$@") (Delta table)"
echo "report:          runs/demo/report/report.html (summary: runs/demo/report/summary.md)"
