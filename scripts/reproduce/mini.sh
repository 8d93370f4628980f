#!/usr/bin/env bash
# Reproduce the 'mini' table (scripts/reproduce/plans.py; settings and sources in docs/protocols.md#reproduction-tables).
# Usage: bash scripts/reproduce/mini.sh -o DIR [--imagenet DIR] [--launcher local|slurm ...] [--dry-run]
# Every option: python scripts/reproduce/reproduce.py --help
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-$here/../../.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" "$here/reproduce.py" mini "$@"
