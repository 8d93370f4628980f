"""Feature-cache hit: size + modification-time check (default) against a full SHA-256 of the arrays; JSON out.

    python benchmarks/bench_cache_hit.py                          # 100k x 2048 float32 (800 MB) entry
    python benchmarks/bench_cache_hit.py --n 1281167 --dim 2048   # ImageNet-1k train at ResNet-50 width

Times are medians of --repeats hits on one entry built once in a temporary folder (removed afterwards); the
first hashing pass also warms the page cache, so the checksum figure is a lower bound for a cold disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mochi.eval.features import FeatureCache
from mochi.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cache_hit_cpu.json")
    args = ap.parse_args()
    spec = {"benchmark": "cache-hit", "n": args.n, "dim": args.dim}
    with tempfile.TemporaryDirectory() as root:

        def fill(feats, labels):
            rng = np.random.default_rng(0)
            for start in range(0, args.n, 50_000):
                stop = min(args.n, start + 50_000)
                feats[start:stop] = rng.standard_normal((stop - start, args.dim), dtype=np.float32)
            labels[:] = np.arange(args.n) % 1000

        FeatureCache(root).build(spec, args.n, args.dim, "float32", fill)
        times = {}
        for name, verify in (("size_and_time", False), ("full_checksum", True)):
            cache = FeatureCache(root, verify=verify)
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                hit = cache.load(spec)
                runs.append(time.perf_counter() - start)
                assert hit is not None and hit.from_cache
            times[name] = round(statistics.median(runs), 4)
    size_mb = args.n * args.dim * 4 / 1e6
    result = {
        "entry": {"n": args.n, "dim": args.dim, "dtype": "float32", "size_mb": round(size_mb, 1)},
        "hit_seconds": times,
        "ratio_checksum_over_stat": round(times["full_checksum"] / max(times["size_and_time"], 1e-9), 1),
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
    }
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
