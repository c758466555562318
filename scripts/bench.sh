#!/usr/bin/env bash
# The benchmarks: every part of the pipeline as same-run ratios (medians of >= 3 runs).
# Regenerates benchmarks/results.md and prints the same table.
#
#   bash scripts/bench.sh                     # quick profile (~15 min on 2 cores; make bench)
#   bash scripts/bench.sh --profile full      # the reference run (hours; benchmarks/README.md)
#   bash scripts/bench.sh --parts 2,3 --set repeats=5
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0
profile_given=0
for arg in "$@"; do
  [[ "$arg" == --profile || "$arg" == --profile=* ]] && profile_given=1
done
if (( ! profile_given )); then
  set -- --profile quick "$@"
fi
exec .venv/bin/python -m benchmarks.run "$@"
