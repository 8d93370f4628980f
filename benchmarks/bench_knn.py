"""kNN timing: the full (k, T) sweep from one search vs a single setting; FAISS vs torch; JSON out.

    python benchmarks/bench_knn.py                   # CPU: 50k x 512 bank, 5k queries
    python benchmarks/bench_knn.py --preset gpu      # also an ImageNet-size bank: 1.28M x 2048, 50k queries

Random unit features (search time does not depend on their meaning). Figures are medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mochi.eval.knn import DEFAULT_KS, knn_classify
from mochi.io import atomic_write_json

PRESETS = {
    "cpu": [dict(n_train=50_000, n_test=5_000, dim=512, classes=100)],
    "gpu": [
        dict(n_train=50_000, n_test=5_000, dim=512, classes=100),
        dict(n_train=1_281_167, n_test=50_000, dim=2048, classes=1000),  # target: sweep <= 15 s
    ],
}
TEMPERATURES = (0.04, 0.07, 0.1)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(n_train: int, n_test: int, dim: int, classes: int, repeats: int, device: str) -> dict:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((n_train, dim), dtype=np.float32)
    test = rng.standard_normal((n_test, dim), dtype=np.float32)
    y_tr, y_te = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)
    out = {"n_train": n_train, "n_test": n_test, "dim": dim, "device": device}
    for backend in ("faiss", "torch"):
        full = median_time(
            lambda b=backend: knn_classify(
                train, y_tr, test, y_te, ks=DEFAULT_KS, temperatures=TEMPERATURES, backend=b, device=device
            ),
            repeats,
        )
        single = median_time(
            lambda b=backend: knn_classify(
                train, y_tr, test, y_te, ks=(200,), temperatures=(0.07,), backend=b, device=device
            ),
            repeats,
        )
        out[backend] = {
            "sweep_4k_3T_s": round(full, 3),
            "single_k200_s": round(single, 3),
            "sweep_over_single": round(full / single, 3),
        }
    out["faiss_over_torch"] = round(out["faiss"]["sweep_4k_3T_s"] / out["torch"]["sweep_4k_3T_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if args.preset == "gpu" and torch.cuda.is_available() else "cpu"
    rows = [bench(**cfg, repeats=args.repeats, device=device) for cfg in PRESETS[args.preset]]
    result = {
        "benchmark": "knn",
        "preset": args.preset,
        "targets": {"sweep_over_single": "<= 1.2", "faiss_over_torch": "<= 1.0"},
        "results": rows,
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            **({"gpu": torch.cuda.get_device_name()} if device == "cuda" else {}),
        },
        "load_average_1min": os.getloadavg()[0],  # > cpu count means other work competed for the CPU
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"knn_{args.preset}.json")
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
