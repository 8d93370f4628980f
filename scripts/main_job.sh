#!/usr/bin/env bash
# The main job: the Fashion-MNIST study's recipe shortened to 30 epochs (scripts/reproduce/plans.py 'main';
# settings in docs/protocols.md#reproduction-tables). Pretrains MoCo-v2 and MoCHi (512, 512, 128) side by
# side on the embedded subset (one core each), evaluates both and a random-init ResNet-18 with kNN and the
# lbfgs / sgd-grid linear probes on the whole embedded split, prints the table and draws the plots:
#   RUN_DIR/pretrain/{moco-v2,mochi-512-512-128}/   checkpoints, config.json, metrics.jsonl, logs in RUN_DIR/logs
#   RUN_DIR/suites/fashion-mnist/results/           one JSON record per evaluation
#   RUN_DIR/table.{md,tex,csv}, RUN_DIR/plots/{table,knn,curves}.png
# Re-running continues an interrupted run (Ctrl-C or kill leave a checkpoint) and skips finished work.
# Usage: bash scripts/main_job.sh [RUN_DIR]   (default runs/main)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-runs/main}"
PYTHON=.venv/bin/python
[ -x "$PYTHON" ] || { echo "main_job: $PYTHON not found; run 'bash scripts/setup.sh' first" >&2; exit 1; }

"$PYTHON" scripts/reproduce/reproduce.py main -o "$RUN_DIR" --jobs 2
echo
cat "$RUN_DIR/table.md"
