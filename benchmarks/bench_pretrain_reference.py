"""Whole-process pretraining throughput: ``mochi pretrain`` against the official MoCo model, side by side.

Each side is a fresh process that trains one epoch on the same images (the first ``--images`` of the
embedded Fashion-MNIST subset) with the same model (ResNet-18 + MLP head), image size, batch, queue and
loader workers; the other side is ``benchmarks/reference_moco_loop.py``, which drives the official
``moco.builder.MoCo`` from a checkout given with ``--reference``. Runs are interleaved (ours, reference,
ours, ...) so that drift in machine speed hits every variant alike; the JSON has each run's whole-process
wall time and where it went (start-up, the training loop, the final checkpoint), and the ratios of medians.

Variants of our side separate the causes of a gap:

- ``mochi``: ``mochi pretrain`` as a user runs it with these flags;
- ``mochi-threads=N``: the same with ``OMP_NUM_THREADS=N`` (intra-op threads chosen by the user).

    python benchmarks/bench_pretrain_reference.py --reference PATH/TO/moco               # default config
    python benchmarks/bench_pretrain_reference.py --reference PATH/TO/moco --config plain  # no blur, 1 BN
    python benchmarks/bench_pretrain_reference.py --reference PATH/TO/moco --config plain --busy 2
        # the same beside two busy processes (a shared machine)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mochi.io import atomic_write_json

HERE = Path(__file__).resolve().parent
CONFIGS = {
    # The official defaults on both sides: aug+ with blur; our single-device default of 8 BN groups.
    "defaults": dict(aug="aug-plus", bn_splits=None, blur=True),
    # The same computation on both sides: no blur, one BN group (one process's shuffle BN).
    "plain": dict(aug="aug-plus-small", bn_splits=1, blur=False),
}


def ours(a, cfg: dict, out: Path, threads: int | None) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "mochi", "pretrain", "--data", "fashion-mnist-embedded"]
    cmd += ["--limit", str(a.images), "--epochs", "1", "-a", a.arch, "--image-size", str(a.image_size)]
    cmd += ["-b", str(a.batch_size), "--moco-k", str(a.moco_k), "-j", str(a.workers), "--aug", cfg["aug"]]
    cmd += ["--log-every", "10", "-q", "-o", str(out)]
    if cfg["bn_splits"] is not None:
        cmd += ["--bn-splits", str(cfg["bn_splits"])]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return cmd, env


def reference(a, cfg: dict, out: Path) -> tuple[list[str], dict]:
    cmd = [sys.executable, str(HERE / "reference_moco_loop.py"), "--reference", a.reference]
    cmd += ["--images", str(a.images), "-a", a.arch, "--image-size", str(a.image_size)]
    cmd += ["-b", str(a.batch_size), "--moco-k", str(a.moco_k), "-j", str(a.workers), "-o", str(out)]
    if not cfg["blur"]:
        cmd.append("--no-blur")
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    return cmd, env


def _busy() -> None:
    while True:
        pass


def run_once(name: str, cmd: list[str], env: dict, out: Path) -> dict:
    t0 = time.perf_counter()
    cpu0 = os.times()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    row = {
        "wall_s": wall,
        "cpu_s": (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system),
    }
    if name == "reference":
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(loop_s=info["loop_s"], images=info["images"], threads=info["threads"])
        row.update({k: info[k] for k in ("startup_s", "first_batch_s", "checkpoint_s")})
    else:
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        epoch = [x for x in lines if x["type"] == "epoch"][-1]
        config = json.loads((out / "config.json").read_text())
        row.update(loop_s=epoch["time_s"], images=epoch["global_step"] * config["config"]["batch_size"])
        row["threads"] = config["intra_op_threads"]
    row["images_per_s_wall"] = row["images"] / wall
    row["images_per_s_loop"] = row["images"] / row["loop_s"]
    row["outside_loop_s"] = wall - row["loop_s"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--reference", required=True, help="checkout of facebookresearch/moco (holds moco/builder.py)"
    )
    p.add_argument("--config", choices=sorted(CONFIGS), default="defaults")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--images", type=int, default=1920)
    p.add_argument("-a", "--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--moco-k", type=int, default=4096)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument(
        "--threads", default="1", help="comma-separated OMP_NUM_THREADS variants of our side ('' for none)"
    )
    p.add_argument(
        "--busy", type=int, default=0, help="run this many busy processes beside every run (a shared machine)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path [benchmarks/results/pretrain_reference_<config>.json]",
    )
    a = p.parse_args()
    if not (Path(a.reference) / "moco" / "builder.py").is_file():
        raise SystemExit(
            f"--reference {a.reference}: no moco/builder.py; give a checkout of facebookresearch/moco"
        )
    cfg = CONFIGS[a.config]
    variants = ["mochi", *[f"mochi-threads={t}" for t in a.threads.split(",") if t.strip()], "reference"]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    load_start = os.getloadavg()[0]
    hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(a.busy)]
    for h in hogs:
        h.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(a.runs):
                for v in variants:
                    out = Path(tmp) / f"{v}-{r}"
                    out.mkdir()
                    if v == "reference":
                        cmd, env = reference(a, cfg, out)
                    else:
                        threads = int(v.split("=")[1]) if "=" in v else None
                        cmd, env = ours(a, cfg, out, threads)
                    row = run_once("reference" if v == "reference" else "mochi", cmd, env, out)
                    runs[v].append(row)
                    print(
                        f"run {r} {v}: wall {row['wall_s']:.1f} s, "
                        f"loop {row['images_per_s_loop']:.1f} img/s, threads {row['threads']}",
                        file=sys.stderr,
                    )
        load_end = os.getloadavg()[0]
    finally:
        for h in hogs:
            h.terminate()

    def med(v: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[v])

    summary = {
        v: {
            k: med(v, k)
            for k in ("wall_s", "loop_s", "outside_loop_s", "images_per_s_wall", "images_per_s_loop", "cpu_s")
        }
        for v in variants
    }
    ratios = {
        v: {
            "throughput_vs_reference_wall": summary[v]["images_per_s_wall"]
            / summary["reference"]["images_per_s_wall"],
            "throughput_vs_reference_loop": summary[v]["images_per_s_loop"]
            / summary["reference"]["images_per_s_loop"],
        }
        for v in variants
        if v != "reference"
    }
    cpu_model = (
        next(
            (
                x.split(":", 1)[1].strip()
                for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    result = {
        "what": "one epoch, whole process: mochi pretrain vs a loop around the official MoCo model",
        "config": {
            "name": a.config,
            **cfg,
            **{k: getattr(a, k) for k in ("images", "arch", "image_size", "batch_size", "moco_k", "workers")},
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_model": cpu_model,
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": load_start,
            "load_average_1m_at_end": load_end,
            "busy_processes_beside": a.busy,
        },
        "ratio_note": "> 1: ours has the higher throughput; medians over the runs",
        "ratios": ratios,
        "median": summary,
        "runs": runs,
    }
    busy = f"_busy{a.busy}" if a.busy else ""
    out = a.out or HERE / "results" / f"pretrain_reference_{a.config}{busy}.json"
    atomic_write_json(out, result)
    print(json.dumps({"ratios": ratios, "median": summary}, indent=2))


if __name__ == "__main__":
    main()
