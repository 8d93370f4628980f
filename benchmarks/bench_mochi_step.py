"""Time MoCo-v2 and MoCHi training steps side by side (same model, batch, K) and write JSON.

Also times the mixing function alone against a straightforward per-query loop, to show the
vectorisation. Steps are interleaved (MoCo, MoCHi, MoCo, ...) so that drift in machine speed affects
both equally; the figure reported is the median step time.

    python benchmarks/bench_mochi_step.py                 # small CPU config (always)
    python benchmarks/bench_mochi_step.py --preset gpu    # R50, batch 256, K 65536, MoCHi (1024, 1024, 256)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mochi.io import atomic_write_json
from mochi.pretrain.losses import mix_hard_negatives
from mochi.pretrain.moco import MochiParams, MoCo

PRESETS = {
    "cpu": dict(arch="resnet18", batch=64, image_size=32, queue_size=4096, mochi=(256, 256, 64), steps=10),
    "gpu": dict(
        arch="resnet50", batch=256, image_size=224, queue_size=65536, mochi=(1024, 1024, 256), steps=30
    ),
}


def mix_per_query_loop(q, queue, n_hard, s, s_prime, generator=None):
    """The straightforward version: one Python iteration per query (reference for timing only)."""
    out = []
    for b in range(q.shape[0]):
        idx = (queue @ q[b]).topk(n_hard).indices
        hard = queue[idx]
        i = torch.randint(0, n_hard, (s,), device=q.device, generator=generator)
        j = torch.randint(0, n_hard, (s,), device=q.device, generator=generator)
        a = torch.rand(s, 1, device=q.device, generator=generator)
        h1 = F.normalize(a * hard[i] + (1 - a) * hard[j], dim=1)
        j2 = torch.randint(0, n_hard, (s_prime,), device=q.device, generator=generator)
        beta = 0.5 * torch.rand(s_prime, 1, device=q.device, generator=generator)
        h2 = F.normalize(beta * q[b] + (1 - beta) * hard[j2], dim=1)
        out.append(torch.cat([h1, h2]))
    return torch.stack(out)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats):
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def machine(device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return info


def bench_steps(p, device, dtype):
    n, s, sp = p["mochi"]
    torch.manual_seed(0)
    kw = dict(arch=p["arch"], queue_size=p["queue_size"], bn_splits=1)
    models = {"moco": MoCo(**kw).to(device), "mochi": MoCo(**kw, mochi=MochiParams(n, s, sp)).to(device)}
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    opts = {}
    for name, m in models.items():
        m.to(memory_format=fmt).train()
        opts[name] = torch.optim.SGD(m.encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(p["batch"], 3, p["image_size"], p["image_size"], device=device).to(memory_format=fmt)
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step(name):
        with autocast:
            out = models[name](x, x, name == "mochi", gen)
        opts[name].zero_grad(set_to_none=True)
        out["loss"].backward()
        opts[name].step()

    for name in models:  # warm-up (cudnn autotune, allocator)
        for _ in range(3):
            step(name)
    times = {"moco": [], "mochi": []}
    for _ in range(p["steps"]):
        for name in models:
            times[name] += time_call(lambda name=name: step(name), device, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "moco_step_s": med["moco"],
        "mochi_step_s": med["mochi"],
        "mochi_over_moco": med["mochi"] / med["moco"],
        "overhead_percent": 100 * (med["mochi"] / med["moco"] - 1),
        "images_per_s": {k: p["batch"] / v for k, v in med.items()},
        "steps_timed": p["steps"],
    }


def bench_mixing(p, device):
    n, s, sp = p["mochi"]
    g = torch.Generator(device=device).manual_seed(0)
    q = F.normalize(torch.randn(p["batch"], 128, device=device, generator=g), dim=1)
    queue = F.normalize(torch.randn(p["queue_size"], 128, device=device, generator=g), dim=1)
    vec = statistics.median(time_call(lambda: mix_hard_negatives(q, queue, n, s, sp, g), device, 10))
    loop = statistics.median(time_call(lambda: mix_per_query_loop(q, queue, n, s, sp, g), device, 3))
    return {"vectorised_s": vec, "per_query_loop_s": loop, "speedup": loop / vec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per method")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path [benchmarks/results/mochi_step_<preset>.json]"
    )
    a = ap.parse_args()
    p = dict(PRESETS[a.preset])
    if a.steps:
        p["steps"] = a.steps
    device = torch.device("cuda" if a.preset == "gpu" and torch.cuda.is_available() else "cpu")
    if a.preset == "gpu" and device.type != "cuda":
        raise SystemExit("--preset gpu needs a CUDA device")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = {
        "benchmark": "mochi_step",
        "preset": a.preset,
        "config": {**p, "mochi": list(p["mochi"]), "amp": str(dtype) if dtype else "fp32", "dim": 128},
        "machine": machine(device),
        "steps": bench_steps(p, device, dtype),
        "mixing_function": bench_mixing(p, device),
    }
    out = a.out or Path(__file__).parent / "results" / f"mochi_step_{a.preset}.json"
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
