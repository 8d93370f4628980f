"""aug+ cost per image: the reference's PIL Gaussian blur (ours) vs torchvision's tensor blur; JSON out.

    python benchmarks/bench_augment.py                 # 224 px crops of 320x256 images
    python benchmarks/bench_augment.py --workers 2     # also the DataLoader's images/s with 2 workers

Both pipelines are aug+ (crop, colour jitter p 0.8, grey p 0.2, blur p 0.5, flip, normalise); they differ only
in the blur: ``mochi.transforms.GaussianBlur`` (PIL, radius = sigma, as the MoCo-v2 reference) against
``torchvision.transforms.GaussianBlur`` with a kernel of ~10% of the crop (this project's earlier choice).
Each figure is the median of --repeats passes over the same synthetic photos-sized images, measured side by
side in one process; the loader figure runs both pipelines through a DataLoader of two views per image.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from mochi.io import atomic_write_json
from mochi.transforms import IMAGENET_MEAN, IMAGENET_STD, TwoCrops, aug_plus


def torchvision_blur_aug_plus(size: int) -> T.Compose:
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


def only_blur(pipeline: T.Compose) -> T.Compose:
    """The blur step alone, always applied (p = 1), on the PIL image (tensor blur converts first)."""
    blur = next(t.transforms[0] for t in pipeline.transforms if isinstance(t, T.RandomApply)
                and "Blur" in type(t.transforms[0]).__name__)  # fmt: skip
    if isinstance(blur, T.GaussianBlur):
        return T.Compose([T.PILToTensor(), blur])
    return T.Compose([blur])


class Photos(Dataset):
    def __init__(self, n: int, height: int = 256, width: int = 320) -> None:
        rng = np.random.default_rng(0)
        # smooth random images (a blurred noise field), closer to photos than white noise
        base = rng.integers(0, 256, (n, height // 8, width // 8, 3), dtype=np.uint8)
        self.images = [Image.fromarray(b).resize((width, height), Image.BILINEAR) for b in base]
        self.transform = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), 0


def per_image_ms(pipeline, images, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for img in images:
            pipeline(img)
        times.append((time.perf_counter() - start) / len(images) * 1000)
    return statistics.median(times)


def loader_images_per_s(dataset: Photos, pipeline, workers: int, batch: int, repeats: int) -> float:
    dataset.transform = TwoCrops(pipeline)
    rates = []
    for _ in range(repeats):
        loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False)
        start = time.perf_counter()
        n = sum(len(views[0]) for views, _ in loader)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for the loader figure")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "augment_cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = Photos(args.images)
    ours, theirs = aug_plus(args.size, blur=True), torchvision_blur_aug_plus(args.size)
    crops = [T.RandomResizedCrop(args.size, scale=(0.2, 1.0))(img) for img in data.images]
    result = {
        "what": "aug+ per image: PIL Gaussian blur (ours, as the reference) vs torchvision tensor blur",
        "image": f"{data.images[0].width}x{data.images[0].height} RGB, crop {args.size}",
        "blur_only_ms": {
            "pil": round(per_image_ms(only_blur(ours), crops, args.repeats), 3),
            "torchvision": round(per_image_ms(only_blur(theirs), crops, args.repeats), 3),
        },
        "aug_plus_ms": {
            "pil": round(per_image_ms(ours, data.images, args.repeats), 3),
            "torchvision": round(per_image_ms(theirs, data.images, args.repeats), 3),
        },
        "loader_images_per_s": {
            "workers": args.workers,
            "pil": round(loader_images_per_s(data, ours, args.workers, 32, args.repeats), 1),
            "torchvision": round(loader_images_per_s(data, theirs, args.workers, 32, args.repeats), 1),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    b, a = result["blur_only_ms"], result["aug_plus_ms"]
    result["ratios"] = {
        "blur_torchvision_over_pil": round(b["torchvision"] / b["pil"], 2),
        "aug_plus_torchvision_over_pil": round(a["torchvision"] / a["pil"], 2),
        "loader_pil_over_torchvision": round(
            result["loader_images_per_s"]["pil"] / result["loader_images_per_s"]["torchvision"], 2
        ),
    }
    atomic_write_json(args.out, result)
    print(f"blur only, ms/image: PIL {b['pil']}, torchvision {b['torchvision']}")
    print(f"aug+ ms/image: PIL blur {a['pil']}, torchvision blur {a['torchvision']}")
    lo = result["loader_images_per_s"]
    print(f"loader images/s ({args.workers} workers): PIL {lo['pil']}, torchvision {lo['torchvision']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
