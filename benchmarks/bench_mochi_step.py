"""Time MoCo-v2 and MoCHi training steps side by side (same model, batch, K) and write JSON.

Also times the mixing function alone against a loop written the way third-party implementations write it
(per query: its top-N; per synthetic point: pair sampling, mixing, normalisation), and profiles one step of
each (torch.profiler) to say which operators the extra time of MoCHi goes to. Steps are interleaved (MoCo,
MoCHi, MoCo, ...) so that drift in machine speed affects both equally; min and median are reported, wall
time and process CPU time. The statistics of the negatives (``--analysis``: positive rank, false-negative
rates, synthetic-point fractions, similarity percentiles) are timed the same way, on and off, for MoCo and
MoCHi steps on labelled batches, with the statistics alone against a step.

    python benchmarks/bench_mochi_step.py                  # small CPU config: R18, 32 px, batch 64, K 4096
    python benchmarks/bench_mochi_step.py --preset main    # the main job's: R18, K 1024, (512, 512, 128)
    python benchmarks/bench_mochi_step.py --preset paper   # R18, 96 px, K 16384, (1024, 1024, 256)
    python benchmarks/bench_mochi_step.py --preset gpu     # R50, batch 256, K 65536, MoCHi (1024, 1024, 256)
    python benchmarks/bench_mochi_step.py --analysis-only  # only the analysis on/off part (its own JSON)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mochi.io import atomic_write_json
from mochi.pretrain.losses import contrastive_loss, mix_hard_negatives, mochi_logits, moco_logits
from mochi.pretrain.moco import MochiParams, MoCo
from mochi.pretrain.negatives import negative_stats

PRESETS = {
    "cpu": dict(arch="resnet18", batch=64, image_size=32, queue_size=4096, mochi=(256, 256, 64), steps=10),
    # The main job's (scripts/main_job.sh): a queue of 1024, 640 synthetic points per query.
    "main": dict(arch="resnet18", batch=64, image_size=32, queue_size=1024, mochi=(512, 512, 128), steps=20),
    # N, s, s' against K as in the paper's ImageNet runs (1024 of 16384), on an image size a CPU can step.
    "paper": dict(
        arch="resnet18", batch=32, image_size=96, queue_size=16384, mochi=(1024, 1024, 256), steps=8
    ),
    "gpu": dict(
        arch="resnet50", batch=256, image_size=224, queue_size=65536, mochi=(1024, 1024, 256), steps=30
    ),
}


def mix_per_point_loop(q, queue, n_hard, s, s_prime, generator=None):
    """The loop as third-party code writes it (reference for timing only): per query its top-N, then per
    synthetic point one pair draw, one mix and one normalisation."""
    out = []
    for b in range(q.shape[0]):
        hard = queue[(queue @ q[b]).topk(n_hard).indices]
        points = []
        for _ in range(s):
            i, j = torch.randint(0, n_hard, (2,), device=q.device, generator=generator).tolist()
            a = torch.rand((), device=q.device, generator=generator)
            points.append(F.normalize(a * hard[i] + (1 - a) * hard[j], dim=0))
        for _ in range(s_prime):
            j = int(torch.randint(0, n_hard, (), device=q.device, generator=generator))
            beta = 0.5 * torch.rand((), device=q.device, generator=generator)
            points.append(F.normalize(beta * q[b] + (1 - beta) * hard[j], dim=0))
        out.append(torch.stack(points))
    return torch.stack(out)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats):
    """Wall and process CPU seconds of ``repeats`` calls: [(wall, cpu), ...]."""
    times = []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def summary(times) -> dict:
    wall, cpu = [t[0] for t in times], [t[1] for t in times]
    return {
        "wall_min_s": min(wall),
        "wall_median_s": statistics.median(wall),
        "cpu_min_s": min(cpu),
        "cpu_median_s": statistics.median(cpu),
    }


def machine(device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average_1m_at_start": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return info


def build_step(p, device, dtype):
    """Two identical models (MoCo, MoCHi) and a function running one training step of either."""
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

    return step


def bench_steps(step, p, device):
    for name in ("moco", "mochi"):  # warm-up (cudnn autotune, allocator)
        for _ in range(3):
            step(name)
    times = {"moco": [], "mochi": []}
    for _ in range(p["steps"]):
        for name in times:
            times[name] += time_call(lambda name=name: step(name), device, 1)
    stats = {k: summary(v) for k, v in times.items()}
    ratio = {
        f"mochi_over_moco_{key.removesuffix('_s')}": stats["mochi"][key] / stats["moco"][key]
        for key in ("wall_min_s", "wall_median_s", "cpu_median_s")
    }
    return {
        **stats,
        **ratio,
        "overhead_percent_wall_median": 100 * (ratio["mochi_over_moco_wall_median"] - 1),
        "images_per_s": {k: p["batch"] / v["wall_median_s"] for k, v in stats.items()},
        "steps_timed": p["steps"],
    }


def bench_analysis(p, device, dtype, repeats: int = 20) -> dict:
    """Steps with the statistics of the negatives on and off (labelled batches, a queue of labelled keys),
    interleaved, for MoCo and MoCHi; each step also stacks its statistics as the training loop does. And the
    statistics alone (the MoCo case, which needs its own top-N) against a MoCo step, a low-noise figure."""
    n, s, sp = p["mochi"]
    b, k = p["batch"], p["queue_size"]
    g = torch.Generator(device=device).manual_seed(0)
    labels = torch.randint(0, 10, (b,), device=device, generator=g)
    models, opts = {}, {}
    for name in ("moco", "moco+analysis", "mochi", "mochi+analysis"):
        torch.manual_seed(0)
        mochi = MochiParams(n, s, sp) if name.startswith("mochi") else None
        analysis_n = n if name.endswith("+analysis") else None
        m = MoCo(arch=p["arch"], queue_size=k, bn_splits=1, mochi=mochi, analysis_n=analysis_n).to(device)
        m.queue_labels.copy_(torch.randint(0, 10, (k,), device=device, generator=g))  # steady state
        models[name] = m.train()
        opts[name] = torch.optim.SGD(m.encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(b, 3, p["image_size"], p["image_size"], device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step(name):
        with autocast:
            out = models[name](x, x, name.startswith("mochi"), gen, labels)
        opts[name].zero_grad(set_to_none=True)
        out["loss"].backward()
        opts[name].step()
        torch.stack([v.detach().float() for v in out.values()])  # what the loop keeps per step

    for name in models:
        for _ in range(2):
            step(name)
    times: dict[str, list] = {name: [] for name in models}
    for _ in range(p["steps"]):
        for name in times:
            times[name] += time_call(lambda name=name: step(name), device, 1)
    stats = {name: summary(v) for name, v in times.items()}
    ratios = {
        f"{base}_analysis_over_plain_{key.removesuffix('_s')}": (
            stats[f"{base}+analysis"][key] / stats[base][key]
        )
        for base in ("moco", "mochi")
        for key in ("wall_min_s", "wall_median_s", "cpu_median_s")
    }
    # The statistics alone, on the logits of a MoCo step (its own top-N of the queue).
    q = F.normalize(torch.randn(b, 128, device=device, generator=g), dim=1)
    queue = F.normalize(torch.randn(k, 128, device=device, generator=g), dim=1)
    logits = moco_logits(q, q, queue, 0.2)
    queue_labels = models["moco+analysis"].queue_labels

    def alone():
        hard_idx = logits[:, 1:].topk(min(n, k), dim=1).indices
        negative_stats(logits, k, 0.2, labels, queue_labels, hard_idx)

    alone_t = summary(time_call(alone, device, repeats))
    return {
        **stats,
        **ratios,
        "statistics_alone": alone_t,
        "statistics_alone_over_moco_step": {
            key: alone_t[key] / stats["moco"][key] for key in ("cpu_median_s", "wall_median_s")
        },
        "steps_timed": p["steps"],
    }


def bench_heads(p, device, repeats: int = 20, top: int = 8) -> dict:
    """Where MoCHi's extra time goes: the contrastive head alone (logits, mixing, loss, backward to q) of
    MoCo and of MoCHi, timed interleaved, and the MoCHi head's operators by self time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    n, s, sp = p["mochi"]
    g = torch.Generator(device=device).manual_seed(0)
    b, t = p["batch"], 0.2
    q0 = F.normalize(torch.randn(b, 128, device=device, generator=g), dim=1)
    k = F.normalize(torch.randn(b, 128, device=device, generator=g), dim=1)
    queue = F.normalize(torch.randn(p["queue_size"], 128, device=device, generator=g), dim=1)

    def head(mix: bool):
        q = q0.clone().requires_grad_(True)
        if mix:  # as MoCo.forward does it: one q·queue for the logits and the top-N
            l_neg = q @ queue.T
            m = mix_hard_negatives(q, queue, n, s, sp, g, sim=l_neg)
            logits = mochi_logits(q, k, queue, m.synthetic, t, l_neg=l_neg)
        else:
            logits = moco_logits(q, k, queue, t)
        contrastive_loss(logits).backward()

    times = {"moco": [], "mochi": []}
    for _ in range(repeats):
        for name in times:
            times[name] += time_call(lambda name=name: head(name == "mochi"), device, 1)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(5):
            head(True)
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = sorted(((e.key, getattr(e, attr)) for e in prof.key_averages()), key=lambda kv: -kv[1])
    total = sum(v for _, v in ops)
    return {
        "moco_head": summary(times["moco"]),
        "mochi_head": summary(times["mochi"]),
        "mochi_head_self_time_share": {key: v / total for key, v in ops[:top]},
    }


def bench_mixing(p, device):
    n, s, sp = p["mochi"]
    g = torch.Generator(device=device).manual_seed(0)
    q = F.normalize(torch.randn(p["batch"], 128, device=device, generator=g), dim=1)
    queue = F.normalize(torch.randn(p["queue_size"], 128, device=device, generator=g), dim=1)
    # The loop runs on the first `lq` queries only (a GPU batch would take minutes) and is scaled per query.
    lq = min(p["batch"], 64)
    vec, loop = [], []
    for _ in range(3):  # interleaved: three loop calls, ten vectorised calls beside each
        loop += time_call(lambda: mix_per_point_loop(q[:lq], queue, n, s, sp, g), device, 1)
        vec += time_call(lambda: mix_hard_negatives(q, queue, n, s, sp, g), device, 10)
    v, lo = summary(vec), summary(loop)
    scale = p["batch"] / lq
    return {
        "vectorised": v,
        "per_point_loop": lo,
        "loop_queries": lq,
        "speedup_wall_median": scale * lo["wall_median_s"] / v["wall_median_s"],
        "speedup_wall_min": scale * lo["wall_min_s"] / v["wall_min_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per method")
    ap.add_argument(
        "--threads", type=int, default=None, help="intra-op threads [torch's default; 1 on shared cores]"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path [benchmarks/results/mochi_step_<preset>.json]"
    )
    ap.add_argument(
        "--analysis-only", action="store_true",
        help="time only the analysis on/off steps [JSON: benchmarks/results/analysis_step_<preset>.json]",
    )  # fmt: skip
    a = ap.parse_args()
    p = dict(PRESETS[a.preset])
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.steps:
        p["steps"] = a.steps
    device = torch.device("cuda" if a.preset == "gpu" and torch.cuda.is_available() else "cpu")
    if a.preset == "gpu" and device.type != "cuda":
        raise SystemExit("--preset gpu needs a CUDA device")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if a.analysis_only:
        result = {
            "benchmark": "analysis_step",
            "preset": a.preset,
            "config": {**p, "mochi": list(p["mochi"]), "amp": str(dtype) if dtype else "fp32", "dim": 128},
            "machine": machine(device),
            "analysis": bench_analysis(p, device, dtype),
        }
        result["machine"]["load_average_1m_at_end"] = os.getloadavg()[0]
        out = a.out or Path(__file__).parent / "results" / f"analysis_step_{a.preset}.json"
        atomic_write_json(out, result)
        print(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return
    step = build_step(p, device, dtype)
    result = {
        "benchmark": "mochi_step",
        "preset": a.preset,
        "config": {**p, "mochi": list(p["mochi"]), "amp": str(dtype) if dtype else "fp32", "dim": 128},
        "machine": machine(device),
        "steps": bench_steps(step, p, device),
        "heads": bench_heads(p, device),
        "mixing_function": bench_mixing(p, device),
        "analysis": bench_analysis(p, device, dtype),
    }
    # The head difference is MoCHi's whole extra work; against a MoCo step it is a low-noise overhead figure.
    extra = {
        key: result["heads"]["mochi_head"][key] - result["heads"]["moco_head"][key]
        for key in ("cpu_median_s", "wall_median_s")
    }
    result["extra_head_time_over_moco_step"] = {
        key: extra[key] / result["steps"]["moco"][key] for key in extra
    }
    out = a.out or Path(__file__).parent / "results" / f"mochi_step_{a.preset}.json"
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
