"""kNN input handling: one float32 copy normalised in place + ``faiss.knn`` (ours) against the earlier path
(a float32 copy, ``F.normalize`` into a second array, then an ``IndexFlatIP`` holding a third copy); JSON out.

    python benchmarks/bench_knn_copies.py                     # 100k x 512 float16 bank, 2k queries, k 200

Peak memory is the growth of the process's resident peak (VmHWM, reset through /proc/self/clear_refs) over
the search, in MiB; times are medians of --repeats. Both paths must return the same neighbours (checked).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mochi.eval.knn import import_faiss, search
from mochi.io import atomic_write_json


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def peak_growth_mib(fn) -> tuple[float, object]:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak to the current resident size
    before = _status("VmRSS")
    out = fn()
    return (_status("VmHWM") - before) / 2**20, out


def old_path(bank, queries, k):
    faiss = import_faiss()
    train = F.normalize(torch.from_numpy(np.array(bank, dtype=np.float32)), dim=1)
    query = F.normalize(torch.from_numpy(np.array(queries, dtype=np.float32)), dim=1)
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train.numpy())
    return index.search(query.numpy(), k)


def new_path(bank, queries, k):
    return search(bank, queries, k, backend="faiss", device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--n-test", type=int, default=2_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "knn_copies_cpu.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((args.n_train, args.dim), dtype=np.float32).astype(np.float16)  # as cached
    queries = rng.standard_normal((args.n_test, args.dim), dtype=np.float32).astype(np.float16)
    import_faiss()
    new_path(bank[:1000], queries[:10], 5)  # warm-up: threads, allocator
    old_path(bank[:1000], queries[:10], 5)
    result = {"bank": [args.n_train, args.dim], "queries": args.n_test, "k": args.k, "dtype": "float16"}
    answers = {}
    for name, fn in (("old", old_path), ("new", new_path)):
        times, peaks = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            peak, answers[name] = peak_growth_mib(lambda fn=fn: fn(bank, queries, args.k))
            times.append(time.perf_counter() - start)
            peaks.append(peak)
        result[name] = {"seconds": round(statistics.median(times), 3), "peak_extra_mib": round(max(peaks), 1)}
    same_ids = bool(np.array_equal(answers["old"][1], answers["new"][1]))
    max_sim_diff = float(np.abs(answers["old"][0] - answers["new"][0]).max())
    result["same_neighbours"] = same_ids
    result["max_similarity_difference"] = max_sim_diff
    result["ratios"] = {
        "time_new_over_old": round(result["new"]["seconds"] / result["old"]["seconds"], 3),
        "peak_new_over_old": round(result["new"]["peak_extra_mib"] / result["old"]["peak_extra_mib"], 3),
    }
    result["machine"] = {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    atomic_write_json(args.out, result)
    print(result)
    if not same_ids:
        raise SystemExit("the two paths disagree on the neighbours")


if __name__ == "__main__":
    main()
