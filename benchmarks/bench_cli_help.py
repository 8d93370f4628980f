"""Start-up time of ``mochi --help`` and ``mochi SUB --help``, as whole processes; JSON out.

    python benchmarks/bench_cli_help.py              # 7 runs each, medians
    python benchmarks/bench_cli_help.py --repeats 15

Each figure is the wall time of a fresh ``python -m mochi ... --help`` process (interpreter start-up
included), median of --repeats, after one untimed warm-up run (file cache). ``python -c "import torch"``
is timed the same way, for scale: help must not pay for it. The machine's load is recorded alongside,
since a busy machine stretches every figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mochi.io import atomic_write_json

SUBCOMMANDS = ("pretrain", "knn", "linear", "detect", "export", "inspect", "results")


def median_time(argv: list[str], repeats: int) -> dict[str, float]:
    subprocess.run(argv, check=True, capture_output=True)  # warm-up: file cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cli_help_cpu.json")
    a = p.parse_args()

    load_before = os.getloadavg()
    py = [sys.executable]
    timings = {"mochi --help": median_time([*py, "-m", "mochi", "--help"], a.repeats)}
    for sub in SUBCOMMANDS:
        timings[f"mochi {sub} --help"] = median_time([*py, "-m", "mochi", sub, "--help"], a.repeats)
    timings['python -c "import torch"'] = median_time([*py, "-c", "import torch"], a.repeats)
    timings['python -c "pass"'] = median_time([*py, "-c", "pass"], a.repeats)
    result = {
        "benchmark": "cli_help",
        "repeats": a.repeats,
        "timings": timings,
        "slowest_help_s": max(v["median_s"] for k, v in timings.items() if k.startswith("mochi")),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_threads": os.cpu_count(),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    for name, t in timings.items():
        print(f"{name:<32} median {t['median_s']:.3f} s  (min {t['min_s']:.3f} s)")
    atomic_write_json(a.out, result)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
