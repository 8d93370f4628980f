"""Training iterations per second of the detection configs, on synthetic images.

  python benchmarks/bench_detect.py                 # smoke_R50_C4 on CPU (and voc07_R50_C4_24k on a GPU
                                                    # when CUDA is available)
  python benchmarks/bench_detect.py --iters 8 --configs smoke_R50_C4 --device cpu

Synthetic images (noise with filled rectangles, COCO format) stand in for real data: the figure is the
model's step time (data loading is in the loop, NUM_WORKERS as in each config, 0 on CPU). The first
iteration (allocation, cudnn autotune) is not counted. Backbone weights are random: speed does not depend
on them. Writes ``benchmarks/results/detect_<config>_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_coco(root: Path, n: int, size: tuple[int, int], classes: int, seed: int = 0) -> Path:
    """``n`` images of ``size`` (w, h) with 1-3 filled boxes each, as a COCO json; returns its path."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    images, annotations = [], []
    for i in range(n):
        img = Image.fromarray(rng.integers(60, 190, size=(h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(w // 8, w // 2)), int(rng.integers(h // 8, h // 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            draw.rectangle(
                [x0, y0, x0 + bw - 1, y0 + bh - 1], fill=tuple(int(c) for c in rng.integers(0, 256, 3))
            )
            category = int(rng.integers(1, classes + 1))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "bbox": [x0, y0, bw, bh],
                 "category_id": category, "area": bw * bh, "iscrowd": 0}
            )  # fmt: skip
        img.save(root / f"{i:04d}.jpg", quality=90)
        images.append({"id": i + 1, "file_name": f"{i:04d}.jpg", "width": w, "height": h})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, classes + 1)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def bench(config: str, device: str, iters: int, work: Path) -> dict:
    from detectron2.engine import HookBase
    from detectron2.utils.env import seed_all_rng

    from mochi.eval.detection_trainer import trainer_class
    from mochi.transfer.detectron2 import build_config, parse_dataset, register_dataset

    gpu = device == "cuda"
    size, n_images, classes = ((800, 600), 32, 20) if gpu else ((128, 96), 8, 6)
    ann = synthetic_coco(work, n_images, size, classes)
    ds = parse_dataset(str(ann), default_split="train")
    register_dataset(ds)
    overrides = ["MODEL.ROI_HEADS.NUM_CLASSES", str(classes), "SOLVER.MAX_ITER", str(iters),
                 "SOLVER.CHECKPOINT_PERIOD", "1000000", "TEST.PRECISE_BN.ENABLED", "False"]  # fmt: skip
    if not gpu:
        overrides += ["DATALOADER.NUM_WORKERS", "0"]
    cfg = build_config(config, weights="", output_dir=work / "out", seed=0, world_size=1, device=device,
                       train=[ds], test=[ds], overrides=overrides)  # fmt: skip
    steps: list[float] = []

    class Timer(HookBase):
        def before_step(self):
            if gpu:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def after_step(self):
            if gpu:
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - self.t)

    base = trainer_class()

    class Trainer(base):
        def build_hooks(self):
            return [Timer()]  # no checkpointing, writers or evaluation inside the timed loop

    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    timed = steps[1:]
    return {
        "config": config,
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({os.cpu_count()} logical cores)",
        "torch_threads": torch.get_num_threads(),
        "image_size_wh": list(size),
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "norm": cfg.MODEL.RESNETS.NORM,
        "iterations_timed": len(timed),
        "seconds_per_iteration": round(float(np.mean(timed)), 3),
        "seconds_per_iteration_min": round(float(np.min(timed)), 3),
        "iterations_per_second": round(1.0 / float(np.mean(timed)), 4),
        "images_per_second": round(cfg.SOLVER.IMS_PER_BATCH / float(np.mean(timed)), 3),
        "first_iteration_seconds": round(steps[0], 3),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=None, help="comma-separated [default: smoke (+ voc07 on GPU)]")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--iters", type=int, default=6, help="training iterations (the first is not timed)")
    parser.add_argument("--note", default="", help="free text stored with the figures (e.g. machine load)")
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    runs = []
    if args.configs:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        runs = [(c, device) for c in args.configs.split(",")]
    else:
        runs = [("smoke_R50_C4", "cpu")] + (
            [("voc07_R50_C4_24k", "cuda")] if torch.cuda.is_available() else []
        )
    RESULTS.mkdir(exist_ok=True)
    for config, device in runs:
        with tempfile.TemporaryDirectory(prefix="bench_detect_") as tmp:
            result = bench(config, device, args.iters, Path(tmp))
        result["note"] = args.note
        out = RESULTS / f"detect_{config}_{device}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
