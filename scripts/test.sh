#!/usr/bin/env bash
# The test command: lint, type-check, then the whole pytest suite (unit, integration on
# local Spark and local Ray, reliability). `make test` and .ci/run both run this.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest "$@"
