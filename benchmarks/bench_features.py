"""Feature-extraction images/s of the evaluation's extract_features on synthetic images; JSON out.

    python benchmarks/bench_features.py                  # CPU: ResNet-18, 64 px, 512 images
    python benchmarks/bench_features.py --preset gpu     # R50, 224 px, 25,600 images, AMP, channels_last

The images are tensors made once in memory, so the figure is the model and the copy-out, not decoding
(data loading is measured by bench_augment.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import TensorDataset

from mochi.eval.features import extract_features
from mochi.io import atomic_write_json

PRESETS = {
    "cpu": dict(arch="resnet18", image_size=64, images=512, batch=128, dim=512),
    "gpu": dict(arch="resnet50", image_size=224, images=25_600, batch=256, dim=2048),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path [benchmarks/results/features_<preset>.json]"
    )
    a = ap.parse_args()
    p = PRESETS[a.preset]
    device = torch.device("cuda" if a.preset == "gpu" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--preset gpu needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    trunk = getattr(torchvision.models, p["arch"])()
    trunk.fc = torch.nn.Identity()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(p["images"], 3, p["image_size"], p["image_size"], generator=g)
    data = TensorDataset(images, torch.zeros(p["images"], dtype=torch.long))
    feats = np.empty((p["images"], p["dim"]), dtype=np.float32)
    labels = np.empty(p["images"], dtype=np.int64)
    warm = TensorDataset(images[: p["batch"]], torch.zeros(p["batch"], dtype=torch.long))
    extract_features(
        trunk, warm, feats[: p["batch"]], labels[: p["batch"]], batch_size=p["batch"], device=device
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    extract_features(trunk, data, feats, labels, batch_size=p["batch"], device=device)
    seconds = time.perf_counter() - t0
    machine = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    machine["load_average_1m_at_start"] = os.getloadavg()[0]
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    result = {
        "benchmark": "features",
        "preset": a.preset,
        "config": {**p, "amp": device.type == "cuda", "channels_last": device.type == "cuda"},
        "machine": machine,
        "seconds": seconds,
        "images_per_s": p["images"] / seconds,
    }
    out = a.out or Path(__file__).parent / "results" / f"features_{a.preset}.json"
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
