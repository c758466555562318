#!/usr/bin/env bash
# One set-up for every entry point (make demo, make test, .ci/run).
# Creates .venv, installs the CPU torch wheel first, then the pinned stack and the
# project in editable mode. Idempotent: a second run with unchanged pins is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV=".venv"
STAMP="$VENV/.mtlrec-installed"

need_java() {
  if ! command -v java >/dev/null 2>&1; then
    echo "setup: Java >= 17 is required by Spark and was not found on PATH." >&2
    echo "       Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
    echo "       macOS:         brew install openjdk@17" >&2
    exit 1
  fi
  local version
  version="$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | cut -d. -f1)"
  if [ -z "$version" ] || [ "$version" -lt 17 ]; then
    echo "setup: Java >= 17 is required by Spark; found '$(java -version 2>&1 | head -1)'." >&2
    echo "       Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
    exit 1
  fi
}

need_java

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

fingerprint="$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ]; then
  echo "setup: .venv is up to date (pins unchanged), nothing to install"
  exit 0
fi

[ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade "pip>=24" "setuptools>=77" wheel
# torch first and alone: with it installed, nothing later can pull a CUDA build.
"${PIP[@]}" install --quiet "torch==2.13.0"
# dev: tests and linters; bench: benchmark-only baselines (LightGBM in part 4).
"${PIP[@]}" install --quiet -c constraints.txt -e ".[dev,bench]"
# petastorm's metadata pins setuptools<70, which torch (>=77) contradicts; it runs fine
# on the newer setuptools (DESIGN.md section 3), so it goes in without its declared deps.
"${PIP[@]}" install --quiet --no-deps -c constraints.txt "petastorm==0.13.1"
echo "$fingerprint" >"$STAMP"
echo "setup: installed into $VENV"
