#!/usr/bin/env bash
# The main job: pretrain MoCo-v2 and MoCHi briefly on the embedded Fashion-MNIST subset (10k images),
# leaving checkpoints and logs in RUN_DIR/moco and RUN_DIR/mochi and their training curves in RUN_DIR/plots,
# then evaluate a random-init backbone and both checkpoints with kNN and linear probes (records in
# RUN_DIR/results), print the comparison and plot kNN top-1 against k (RUN_DIR/plots/knn.*).
# Re-running continues or skips finished pretraining runs (--resume auto) and adds a new set of records.
# Usage: bash scripts/main_job.sh [RUN_DIR]   (default runs/main)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-runs/main}"
MOCHI=.venv/bin/mochi
[ -x "$MOCHI" ] || { echo "main_job: $MOCHI not found; run 'bash scripts/setup.sh' first" >&2; exit 1; }

# Small-data settings (see README): ResNet-18 at 32 px, queue 4096, key momentum 0.99 as in MoCo's
# CIFAR recipe (0.999 barely moves the key encoder in a few hundred steps), split BN in 4 groups.
# -j 0: augmenting 28 px images costs far less than the step, so the loader runs in the main process
# between steps and both cores go to the maths.
COMMON=(--data fashion-mnist-embedded -a resnet18 --image-size 32 --aug aug-plus-small --epochs 3
        -b 128 --moco-k 4096 --moco-m 0.99 --bn-splits 4 -j 0 --seed 0 --resume auto)

echo "== MoCo-v2 -> $RUN_DIR/moco"
"$MOCHI" pretrain "${COMMON[@]}" -o "$RUN_DIR/moco"
echo "== MoCHi (512, 512, 128), mixing from epoch 2 -> $RUN_DIR/mochi"
"$MOCHI" pretrain "${COMMON[@]}" --mochi-n 512 --mochi-s 512 --mochi-s-prime 128 --mochi-warmup 1 \
  -o "$RUN_DIR/mochi"

echo "== training curves -> $RUN_DIR/plots/curves.{png,svg}"
"$MOCHI" plot curves "$RUN_DIR/moco" "$RUN_DIR/mochi" -o "$RUN_DIR/plots/curves"

echo "== evaluation (kNN, linear) -> $RUN_DIR/results"
bash scripts/main_job_eval.sh "$RUN_DIR"
