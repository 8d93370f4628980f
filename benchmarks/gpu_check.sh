#!/usr/bin/env bash
# The GPU figures, in one run (a CUDA machine; about ten minutes): MoCHi / MoCo step ratio and images/s
# (ResNet-50, batch 256, K 65536, MoCHi (1024, 1024, 256), bf16 AMP + channels_last, synthetic 224 px),
# feature extraction images/s, and kNN on a 1.28M x 2048 bank with 50k queries, 4 k x 3 T.
# Each writes benchmarks/results/*_gpu.json with the device named.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" benchmarks/bench_mochi_step.py --preset gpu
"$PY" benchmarks/bench_features.py --preset gpu
"$PY" benchmarks/bench_knn.py --preset gpu --repeats 1
