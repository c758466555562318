#!/usr/bin/env bash
# The test command: lint, type-check, then the whole pytest suite (unit, integration on
# local Spark and local Ray, reliability). `make test` and .ci/run both run this.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
# Two workers (pytest-xdist): the suite mostly waits on JVM and Ray start-ups, so a second
# process overlaps one's waiting with the other's work. Each module runs whole in one worker,
# longest first (tests/conftest.py). The 15 slowest tests are still printed (pyproject).
echo "== pytest"; .venv/bin/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder "$@"
