"""kNN at scale: how the exact FAISS search (4 k x 3 T, one search) grows with the bank; memory peak.

    python benchmarks/bench_knn_scale.py                                 # 10k, 50k, 200k x 512 and 2048
    python benchmarks/bench_knn_scale.py --banks 10000,50000 --dims 512  # a quick subset

Each (bank, dim) runs in a fresh process so that its peak resident memory (ru_maxrss) is its own; random unit
features, 1,000 queries. The feature-cache hit path is measured by bench_cache_hit.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from mochi.io import atomic_write_json

CHILD = """
import json, resource, sys, time
import numpy as np, torch
from mochi.eval.knn import DEFAULT_KS, knn_classify
n, dim, n_test = (int(a) for a in sys.argv[1:4])
rng = np.random.default_rng(0)
train = rng.standard_normal((n, dim), dtype=np.float32)
test = rng.standard_normal((n_test, dim), dtype=np.float32)
y_tr, y_te = rng.integers(0, 100, n), rng.integers(0, 100, n_test)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
knn_classify(train, y_tr, test, y_te, ks=DEFAULT_KS, temperatures=(0.04, 0.07, 0.1),
             backend="faiss", device="cpu")
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n_train": n, "dim": dim, "n_test": n_test, "sweep_4k_3T_s": seconds,
                  "bank_mb": train.nbytes / 2**20, "peak_rss_mb": peak / 1024,
                  "peak_rss_over_inputs_mb": (peak - base) / 1024, "threads": torch.get_num_threads()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--banks", default="10000,50000,200000")
    ap.add_argument("--dims", default="512,2048")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "knn_scale_cpu.json")
    a = ap.parse_args()
    rows = []
    for dim in map(int, a.dims.split(",")):
        for n in map(int, a.banks.split(",")):
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(n), str(dim), str(a.queries)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    result = {
        "benchmark": "knn_scale",
        "backend": "faiss (exact inner product)",
        "results": rows,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "load_average_1m_at_start": os.getloadavg()[0],
    }
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
