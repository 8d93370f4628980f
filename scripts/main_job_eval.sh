#!/usr/bin/env bash
# Evaluate the main job's backbones on the embedded Fashion-MNIST data and print their comparison:
# random-init ResNet-18 (baseline), the latest MoCo-v2 and MoCHi checkpoints of RUN_DIR/{moco,mochi}/;
# kNN (k 10/20/100/200, T 0.07) and linear (lbfgs, sgd-grid) on one shared, cached feature pass each.
# Records go to RUN_DIR/results, the kNN plot to RUN_DIR/plots/knn.{png,svg}. About 2 minutes on 2 CPU cores.
#   usage: bash scripts/main_job_eval.sh RUN_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:?usage: $0 RUN_DIR (holding moco/ and mochi/ pretraining runs)}"
MOCHI=.venv/bin/mochi
RESULTS="$RUN_DIR/results"
# Small-image settings of the main job: 32 px, the whole image resized; a subset keeps it quick.
DATA=(--data fashion-mnist-embedded --image-size 32 --limit-train "${LIMIT_TRAIN:-3000}"
  --limit-test "${LIMIT_TEST:-1000}" --cache-dir "$RUN_DIR/feature_cache" -o "$RESULTS" -q)

latest() {
  local ckpt
  ckpt=$(ls "$1"/checkpoint_*.pth.tar 2>/dev/null | sort | tail -n 1)
  if [ -z "$ckpt" ]; then
    echo "Error: no checkpoint_XXXX.pth.tar in $1: run the pretraining first" >&2
    exit 1
  fi
  echo "$ckpt"
}

MOCO=$(latest "$RUN_DIR/moco")
MOCHI_CKPT=$(latest "$RUN_DIR/mochi")

evaluate() {  # evaluate <backbone args...>
  "$MOCHI" knn "$@" "${DATA[@]}"
  "$MOCHI" linear "$@" "${DATA[@]}" --protocol lbfgs
  "$MOCHI" linear "$@" "${DATA[@]}" --protocol sgd-grid
}

echo "== random-init resnet18"
evaluate --random-init -a resnet18
echo "== MoCo-v2: $MOCO"
evaluate "$MOCO"
echo "== MoCHi: $MOCHI_CKPT"
evaluate "$MOCHI_CKPT"

echo
"$MOCHI" results "$RESULTS" --metrics top1,top5,mean_per_class
echo
"$MOCHI" table "$RESULTS" --knn all
"$MOCHI" plot knn "$RESULTS" -o "$RUN_DIR/plots/knn"
