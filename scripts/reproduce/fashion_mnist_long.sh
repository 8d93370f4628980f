#!/usr/bin/env bash
# The CPU-scale Fashion-MNIST study with a longer budget (scripts/reproduce/plans.py 'fashion-mnist-long';
# results in docs/fashion_mnist_study.md): MoCo-v2 and two MoCHi settings, 3 pretraining seeds each, 60 epochs
# of all 10,000 embedded training images, against random init and raw pixels; table with one row per
# method (mean ± std over pretraining seeds) and plots.
# Usage: bash scripts/reproduce/fashion_mnist_long.sh -o DIR [--dry-run]
# Every option: python scripts/reproduce/reproduce.py --help
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-$here/../../.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" "$here/reproduce.py" fashion-mnist-long "$@"
