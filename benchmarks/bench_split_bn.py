"""Split BN on one device: the encoder run once per group against SplitBatchNorm2d; JSON out.

Both give every group of the batch its own BN statistics (the outputs agree to float rounding, checked here
too); the first runs every layer on groups of batch/splits images, the second runs the convolutions on the
whole batch and splits only the normalisation. Times a query-encoder training step (forward, backward) plus a
key-encoder forward, interleaved, median of the repeats.

    python benchmarks/bench_split_bn.py                       # R18, 32 px: (batch 64, 8 groups), (128, 4)
    python benchmarks/bench_split_bn.py --configs 256x8 --image-size 224 --arch resnet50
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from mochi.io import atomic_write_json
from mochi.pretrain.moco import build_encoder
from mochi.pretrain.split_bn import split_batchnorm


def per_group(encoder: torch.nn.Module, x: torch.Tensor, splits: int) -> torch.Tensor:
    """The encoder once per contiguous group of the batch (each call normalises its own group)."""
    return torch.cat([encoder(chunk) for chunk in x.chunk(splits)], dim=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--configs", default="64x8,128x4", help="comma-separated BATCHxSPLITS")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "split_bn_cpu.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for spec in a.configs.split(","):
        batch, splits = (int(v) for v in spec.split("x"))
        torch.manual_seed(0)
        chunked = build_encoder(a.arch, 128, mlp=True)
        layer = split_batchnorm(copy.deepcopy(chunked), splits)
        x = torch.randn(batch, 3, a.image_size, a.image_size)
        with torch.no_grad():  # same outputs (train-mode statistics per group)
            diff = (per_group(chunked, x, splits) - layer(x)).abs().max().item()

        def step(kind: str, chunked=chunked, layer=layer, x=x, splits=splits) -> float:
            def run(inp: torch.Tensor) -> torch.Tensor:
                return per_group(chunked, inp, splits) if kind == "per_group" else layer(inp)

            t0 = time.perf_counter()
            run(x).square().mean().backward()
            with torch.no_grad():
                run(x)  # the key encoder's forward
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {"per_group": [], "split_bn_layer": []}
        for r in range(a.repeats + 1):
            for kind in times:
                t = step(kind)
                if r:  # the first round warms up
                    times[kind].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "batch": batch,
                "splits": splits,
                "median_s": med,
                "speedup_layer_vs_per_group": med["per_group"] / med["split_bn_layer"],
                "max_abs_output_diff": diff,
            }
        )
        print(rows[-1], flush=True)
    result = {
        "benchmark": "split_bn",
        "arch": a.arch,
        "image_size": a.image_size,
        "threads": torch.get_num_threads(),
        "results": rows,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "load_average_1m_at_start": os.getloadavg()[0],
    }
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
