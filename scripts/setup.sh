#!/usr/bin/env bash
# Create ./.venv (if absent) and install mochi with its test extras into it.
# Idempotent: re-running only installs what is missing. Nothing is downloaded at run time later.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch>=2.14 keeps pip on PyPI's builds (CPU and CUDA alike); see README "Install".
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch>=2.14" -e '.[test]'
.venv/bin/mochi --version
# Detection transfer is optional for the package, but the README's commands and CI install it:
# an existing Detectron2 is kept, else the official build where GitHub is reachable, else the offline route.
PYTHON=.venv/bin/python bash scripts/install_detectron2.sh
# Real-photo test data for the Detectron2 tests (GPL-3 / PASCAL VOC files: cached under .cache/, never
# committed). Without PyPI the step fails softly and those tests skip, naming this command.
.venv/bin/python scripts/fetch_detection_testdata.py || echo "setup: detection test data not fetched" >&2
