"""lbfgs fits on one BLAS thread vs the library's default count, by problem size; JSON out.

    python benchmarks/bench_blas_threads.py

Checks the auto rule of ``mochi.eval.linear.auto_blas_threads`` (one thread below SMALL_BLAS_PROBLEM
training-matrix elements): each row times the same scikit-learn fit (fixed iteration count, random
standardised features) on one thread and on the default count, and says which count the rule picks.
Figures are medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info, threadpool_limits

from mochi.eval.linear import SMALL_BLAS_PROBLEM, auto_blas_threads
from mochi.io import atomic_write_json

SIZES = [
    (800, 512, 10),
    (2000, 512, 10),
    (5000, 512, 100),
    (20_000, 512, 100),
    (10_000, 2048, 100),
    (25_000, 2048, 100),
    (50_000, 2048, 100),
]


def fit_time(x: np.ndarray, y: np.ndarray, threads: int | None, iters: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with threadpool_limits(limits=threads, user_api="blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            LogisticRegression(C=1.0, max_iter=iters, tol=0.0).fit(x, y)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    default_threads = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
    rng, rows = np.random.default_rng(0), []
    for n, d, k in SIZES:
        x = rng.standard_normal((n, d)).astype(np.float32)
        y = rng.integers(0, k, n)
        one = fit_time(x, y, 1, args.iters, args.repeats)
        many = fit_time(x, y, None, args.iters, args.repeats)
        picked = auto_blas_threads(n, d)
        rows.append(
            {
                "n_samples": n,
                "n_features": d,
                "classes": k,
                "one_thread_s": round(one, 4),
                "default_threads_s": round(many, 4),
                "one_thread_speedup": round(many / one, 2),
                "auto_picks": "one thread" if picked == 1 else "default",
                "auto_picks_the_faster": (picked == 1) == (one <= many),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "blas_threads",
        "fit": f"sklearn LogisticRegression lbfgs, {args.iters} iterations",
        "small_problem_elements": SMALL_BLAS_PROBLEM,
        "default_blas_threads": default_threads,
        "results": rows,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    out = Path(args.out or Path(__file__).parent / "results" / "blas_threads_cpu.json")
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
