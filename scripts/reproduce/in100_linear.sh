#!/usr/bin/env bash
# Reproduce the 'in100-linear' table (scripts/reproduce/plans.py; settings and sources in docs/protocols.md#reproduction-tables).
# Usage: bash scripts/reproduce/in100_linear.sh -o DIR [--imagenet DIR] [--launcher local|slurm ...] [--dry-run]
# Every option: python scripts/reproduce/reproduce.py --help
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-$here/../../.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" "$here/reproduce.py" in100-linear "$@"
