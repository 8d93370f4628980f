"""Whole-process pretraining time with OpenMP threads spinning (``OMP_WAIT_POLICY=ACTIVE``) against sleeping
(``PASSIVE``, what the ``mochi`` command sets unless the user chose), on a quiet machine and with other work
on every core; JSON out.

    python benchmarks/bench_omp_wait.py                 # 3 runs each, A/B interleaved, quiet and loaded
    python benchmarks/bench_omp_wait.py --omp-threads 2 --out benchmarks/results/omp_wait_2threads_cpu.json

The run is a small ``mochi pretrain`` (ResNet-18, 32 px, batch 64, K 4096, 2 loader workers, 640
images, one epoch) started as its own process, so the variable is read before torch loads. "Loaded" starts
one busy process per core beside it. Figures: median wall seconds and CPU seconds of the run (its children
included), and the ratio ACTIVE / PASSIVE of each A/B pair.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mochi.io import atomic_write_json

ARGS = ["--data", "fashion-mnist-embedded", "--limit", "640", "-a", "resnet18",
        "--image-size", "32", "--aug", "aug-plus-small", "-b", "64", "--moco-k", "4096", "--moco-m", "0.99",
        "--epochs", "1", "-j", "2", "-q"]  # fmt: skip


def _busy() -> None:
    while True:
        pass


def one_run(policy: str, out: Path, threads: int | None) -> tuple[float, float]:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [sys.executable, "-m", "mochi.cli", "pretrain", *ARGS, "-o", str(out)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(repeats: int, loaded: bool, threads: int | None) -> dict:
    hogs = []
    if loaded:
        hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(os.cpu_count() or 1)]
        for h in hogs:
            h.start()
    runs: dict[str, list[tuple[float, float]]] = {"ACTIVE": [], "PASSIVE": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats):
                for policy in ("ACTIVE", "PASSIVE"):
                    runs[policy].append(one_run(policy, Path(tmp) / f"{policy}{i}", threads))
    finally:
        for h in hogs:
            h.terminate()
    out = {
        p: {
            "wall_s": round(statistics.median(w for w, _ in r), 2),
            "cpu_s": round(statistics.median(c for _, c in r), 2),
        }
        for p, r in runs.items()
    }
    ratios = [a[0] / b[0] for a, b in zip(runs["ACTIVE"], runs["PASSIVE"], strict=True)]
    out["wall_ratio_active_over_passive"] = {
        "median": round(statistics.median(ratios), 2),
        "min": round(min(ratios), 2),
        "max": round(max(ratios), 2),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--omp-threads", type=int, default=None,
        help="force this many intra-op threads (OMP_NUM_THREADS); default: mochi's choice",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "omp_wait_cpu.json")
    args = ap.parse_args()
    result = {
        "what": "mochi pretrain, whole process: OMP_WAIT_POLICY ACTIVE (spinning) vs PASSIVE",
        "run": " ".join(ARGS),
        "intra_op_threads": args.omp_threads or "chosen by mochi",
        "quiet": measure(args.repeats, loaded=False, threads=args.omp_threads),
        "loaded": measure(args.repeats, loaded=True, threads=args.omp_threads),
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
