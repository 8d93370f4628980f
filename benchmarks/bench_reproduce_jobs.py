"""Pretraining stage of a reproduction on a CPU: ``--jobs 1`` against ``--jobs N``, side by side.

Both variants pretrain the same ``--runs`` short runs (ResNet-18, 32 px, the embedded Fashion-MNIST subset,
the study's recipe with fewer images and epochs) through ``scripts/reproduce/reproduce.py``'s own scheduler
(``run_concurrently`` with ``slot_envs``): one run at a time with all the cores as intra-op threads, or N at
a time with an equal share each. Repeats are interleaved (1, N, 1, N, ...) so that drift in machine speed
hits both alike; the JSON has every repeat's wall time, the medians and their ratio.

    python benchmarks/bench_reproduce_jobs.py                      # 4 runs, --jobs 1 vs 2, 2 repeats
    python benchmarks/bench_reproduce_jobs.py --jobs 2 --runs 4 --images 1024 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mochi.distributed import usable_cores
from mochi.io import atomic_write_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts" / "reproduce"))
import reproduce  # noqa: E402


def pretrain_command(a, out: Path, seed: int) -> list[str]:
    return [
        sys.executable, "-m", "mochi", "pretrain", "--data", "fashion-mnist-embedded",
        "--limit", str(a.images),
        "-a", "resnet18", "--image-size", "32", "--aug", "grey-small", "--crop-min", "0.4", "-b", "128",
        "--moco-k", str(a.moco_k), "--moco-m", "0.99", "--bn-splits", "4", "--lr", "0.03",
        "--epochs", str(a.epochs), "--seed", str(seed), "-j", "0", "-q", "-o", str(out),
    ]  # fmt: skip


def one_variant(a, jobs: int, folder: Path) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    envs = reproduce.slot_envs(jobs, 1, [], usable_cores(), environ)
    commands = [pretrain_command(a, folder / f"run{i}", seed=i) for i in range(a.runs)]
    labels = [f"run{i}" for i in range(a.runs)]
    t0 = time.perf_counter()
    failures = reproduce.run_concurrently(commands, labels, envs, folder / "logs")
    wall = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"--jobs {jobs} failed: {failures}")
    threads = [json.loads((folder / lab / "config.json").read_text())["intra_op_threads"] for lab in labels]
    images = a.runs * a.epochs * a.images
    return {"wall_s": wall, "images": images, "images_per_s": images / wall, "threads_per_run": threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2, help="the concurrent variant's runs at a time")
    p.add_argument("--runs", type=int, default=4, help="pretraining runs per variant")
    p.add_argument("--images", type=int, default=1024, help="--limit of each run")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--moco-k", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "reproduce_jobs_cpu.json")
    a = p.parse_args()
    variants = [1, a.jobs]
    rows: dict[int, list[dict]] = {v: [] for v in variants}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for jobs in variants:
                row = one_variant(a, jobs, Path(tmp) / f"jobs{jobs}-{r}")
                rows[jobs].append(row)
                print(f"repeat {r} --jobs {jobs}: {row['wall_s']:.1f} s, {row['images_per_s']:.1f} img/s, "
                      f"threads per run {row['threads_per_run']}", file=sys.stderr)  # fmt: skip
    load_end = os.getloadavg()[0]
    median = {v: statistics.median(x["wall_s"] for x in rows[v]) for v in variants}
    cpu = next(
        (x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
         if x.startswith("model name")), platform.processor(),
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    result = {
        "what": "pretraining stage of a reproduction, whole processes: one run at a time vs --jobs N",
        "settings": {k: getattr(a, k) for k in ("jobs", "runs", "images", "epochs", "moco_k", "repeats")},
        "runs": {f"jobs={v}": rows[v] for v in variants},
        "median_wall_s": {f"jobs={v}": median[v] for v in variants},
        "speedup_jobs_vs_one_at_a_time": median[1] / median[a.jobs],
        "machine": {
            "cpu": cpu,
            "usable_cores": usable_cores(),
            "load_avg_start": load_start,
            "load_avg_end": load_end,
            "python": platform.python_version(),
        },  # fmt: skip
    }
    atomic_write_json(a.out, result)
    print(
        json.dumps(
            {"speedup": result["speedup_jobs_vs_one_at_a_time"], "median_wall_s": result["median_wall_s"]}
        )
    )


if __name__ == "__main__":
    main()
