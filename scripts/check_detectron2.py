"""Check that the installed Detectron2 works on this machine (CPU is enough).

  python scripts/check_detectron2.py --smoke   # seconds: build Faster R-CNN R50-C4 and R50-FPN, one
                                               # inference and one training forward pass each
  python scripts/check_detectron2.py           # ~1-2 min on 2 CPU cores: a few training iterations of a
                                               # Faster R-CNN R50-FPN on a tiny generated COCO-format
                                               # dataset, checkpoint round trip, COCOEvaluator and
                                               # PascalVOCDetectionEvaluator (finite AP; 100 AP when the
                                               # predictions are the ground truth)

Exits non-zero with a message naming what failed. ``scripts/install_detectron2.sh`` runs ``--smoke``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Model-zoo configs exercised by the smoke test: the two Faster R-CNN layouts MoCo transfer uses.
TRAIN_CONFIGS = {
    "c4": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "fpn": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
}
SMOKE_CONFIGS = tuple(TRAIN_CONFIGS.values())
CLASSES = ("red", "blue")
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
IMAGE_SIZE = 128


class CheckFailed(RuntimeError):
    """A Detectron2 check did not give the expected result."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def install_info(route: str | None) -> dict[str, Any]:
    """Version, location and whether compiled ops are present."""
    import importlib.metadata

    import detectron2
    from detectron2 import _C

    try:
        dist_version = importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:
        dist_version = "unknown (no 'detectron2' distribution metadata)"
    return {
        "version": detectron2.__version__,
        "distribution": dist_version,
        "location": str(Path(detectron2.__file__).parent),
        "compiled_ops": not getattr(_C, "PURE_PYTHON_BUILD", False),
        "route": route or "unknown",
        "torch": torch.__version__,
    }


def cpu_cfg(config_path: str, num_classes: int = 80, size: int = 64):
    """A model-zoo config on CPU with random weights, plain BN and small images."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config_path))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.WEIGHTS", "",
            "MODEL.RESNETS.NORM", "BN",
            "MODEL.ROI_HEADS.NUM_CLASSES", num_classes,
            "INPUT.MIN_SIZE_TRAIN", (size,),
            "INPUT.MAX_SIZE_TRAIN", size,
            "INPUT.MIN_SIZE_TEST", size,
            "INPUT.MAX_SIZE_TEST", size,
        ]
    )  # fmt: skip
    return cfg


def smoke() -> dict[str, float]:
    """Build C4 and FPN Faster R-CNNs; one inference and one training forward pass on a 3x64x64 image.

    Returns the total training loss of each model (finite by construction of the check).
    """
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.collect_env import collect_env_info
    from detectron2.utils.events import EventStorage

    require("detectron2" in collect_env_info(), "collect_env_info() does not report detectron2")
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8).float()
    gt = Instances(
        (64, 64), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 48.0]])), gt_classes=torch.tensor([3])
    )
    losses = {}
    for config_path in SMOKE_CONFIGS:
        model = build_model(cpu_cfg(config_path))
        model.eval()
        with torch.no_grad():
            (out,) = model([{"image": image, "height": 64, "width": 64}])
        require("instances" in out, f"{config_path}: inference returned {sorted(out)}, no 'instances'")
        model.train()
        with EventStorage():  # the losses log to the current event storage
            loss_dict = model([{"image": image, "height": 64, "width": 64, "instances": gt}])
        require(
            {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(loss_dict),
            f"{config_path}: training forward returned {sorted(loss_dict)}",
        )
        total = float(sum(v.detach() for v in loss_dict.values()))
        require(math.isfinite(total), f"{config_path}: non-finite training loss {loss_dict}")
        losses[config_path] = total
    return losses


def make_tiny_dataset(root: Path, n_images: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Write ``n_images`` noisy 128x128 JPEGs with 1-2 filled red/blue rectangles each.

    Returns one record per image: ``file`` (stem), ``boxes`` as ``(class_name, x0, y0, x1, y1)`` in
    absolute pixel coordinates (x1, y1 exclusive).
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_images):
        pixels = rng.integers(90, 160, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        boxes = []
        # Odd images hold both classes, even ones a single class (alternating); one rectangle per image
        # half, so rectangles never overlap.
        names = CLASSES if i % 2 else (CLASSES[(i // 2) % 2],)
        for half, name in enumerate(names):
            w, h = (int(v) for v in rng.integers(28, 56, size=2))
            x0 = half * IMAGE_SIZE // 2 + int(rng.integers(0, IMAGE_SIZE // 2 - w + 1))
            y0 = int(rng.integers(0, IMAGE_SIZE - h + 1))
            draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=COLOURS[name])
            boxes.append((name, x0, y0, x0 + w, y0 + h))
        stem = f"img{i:02d}"
        image.save(root / "images" / f"{stem}.jpg", quality=95)
        records.append({"file": stem, "boxes": boxes})
    return records


def write_coco(root: Path, records: list[dict[str, Any]]) -> Path:
    """COCO-format json for ``records`` (category ids start at 1, as in COCO)."""
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        images.append(
            {"id": image_id, "file_name": f"{rec['file']}.jpg", "width": IMAGE_SIZE, "height": IMAGE_SIZE}
        )
        for name, x0, y0, x1, y1 in rec["boxes"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CLASSES.index(name) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_voc(root: Path, records: list[dict[str, Any]], split: str = "test") -> Path:
    """VOC layout (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) for ``records``."""
    import shutil

    voc = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for rec in records:
        shutil.copy(root / "images" / f"{rec['file']}.jpg", voc / "JPEGImages" / f"{rec['file']}.jpg")
        objects = "".join(
            # VOC boxes are 1-based inclusive pixel indices: [x0, x1) -> x0 + 1 .. x1.
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for name, x0, y0, x1, y1 in rec["boxes"]
        )
        (voc / "Annotations" / f"{rec['file']}.xml").write_text(
            f"<annotation><filename>{rec['file']}.jpg</filename><size><width>{IMAGE_SIZE}</width>"
            f"<height>{IMAGE_SIZE}</height><depth>3</depth></size>{objects}</annotation>"
        )
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{r['file']}\n" for r in records))
    return voc


class GroundTruthModel(torch.nn.Module):
    """Predicts the ground truth of a registered dataset (score 1): evaluators must give AP 100."""

    def __init__(self, dataset_name: str):
        super().__init__()
        from detectron2.data import DatasetCatalog

        self.gt = {d["image_id"]: d for d in DatasetCatalog.get(dataset_name)}

    def forward(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from detectron2.structures import Boxes, BoxMode, Instances

        outputs = []
        for inp in inputs:
            record = self.gt[inp["image_id"]]
            boxes = [
                BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]
            ]
            outputs.append(
                {
                    "instances": Instances(
                        (inp["height"], inp["width"]),
                        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                        scores=torch.ones(len(boxes)),
                        pred_classes=torch.tensor([a["category_id"] for a in record["annotations"]]),
                    )
                }
            )
        return outputs


def evaluate(cfg, model: torch.nn.Module, dataset_name: str, evaluator) -> dict[str, float]:
    """Box AP metrics of ``model`` on ``dataset_name``; all must be finite."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    results = inference_on_dataset(model, build_detection_test_loader(cfg, dataset_name), evaluator)
    bbox = dict(results["bbox"])
    require(
        {"AP", "AP50", "AP75"} <= set(bbox), f"{type(evaluator).__name__} returned {sorted(bbox)} for bbox"
    )
    for key in ("AP", "AP50", "AP75"):
        require(math.isfinite(bbox[key]), f"{type(evaluator).__name__}: {key} = {bbox[key]} is not finite")
    return {k: round(float(bbox[k]), 3) for k in ("AP", "AP50", "AP75")}


def check_compiled_op_error() -> str:
    """A compiled-only op must fail with a message naming the fix (pure-Python installs only)."""
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    try:
        pairwise_iou_rotated(boxes, boxes)
    except RuntimeError as e:
        require("compiled" in str(e) and "detectron2.git" in str(e), f"unclear error for a compiled op: {e}")
        return type(e).__name__
    raise CheckFailed("rotated-box IoU ran although this install reports no compiled ops")


def end_to_end(work: Path, iters: int, config_path: str = TRAIN_CONFIGS["fpn"]) -> dict[str, Any]:
    """Train a tiny Faster R-CNN for ``iters`` iterations; evaluate it with the COCO and VOC evaluators."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.pascal_voc import register_pascal_voc
    from detectron2.engine import DefaultTrainer, HookBase, hooks
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    records = make_tiny_dataset(work)
    tag = f"mochi_check_{int(time.time() * 1e6)}"  # unique: the catalogs are process-global
    coco_name, voc_name = f"{tag}_coco", f"{tag}_voc"
    register_coco_instances(coco_name, {}, str(write_coco(work, records)), str(work / "images"))
    register_pascal_voc(voc_name, str(write_voc(work, records)), "test", 2007, CLASSES)

    cfg = cpu_cfg(config_path, num_classes=len(CLASSES), size=IMAGE_SIZE)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", (coco_name,),
            "DATASETS.TEST", (coco_name,),
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 2,
            # Random weights, BN on 2 images: a small, clipped step keeps the few iterations finite.
            "SOLVER.BASE_LR", 0.001,
            "SOLVER.CLIP_GRADIENTS.ENABLED", True,
            "SOLVER.WARMUP_ITERS", 2,
            "SOLVER.MAX_ITER", iters,
            "SOLVER.CHECKPOINT_PERIOD", 10_000,
            "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 64,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
            "MODEL.RPN.PRE_NMS_TOPK_TEST", 200,
            "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,  # a barely trained model must still predict boxes
            "OUTPUT_DIR", str(work / "output"),
        ]
    )  # fmt: skip

    step_seconds: list[float] = []

    class StepTimer(HookBase):
        def before_step(self):
            self._start = time.perf_counter()

        def after_step(self):
            step_seconds.append(time.perf_counter() - self._start)

    class Trainer(DefaultTrainer):
        def build_hooks(self):
            # Evaluation is run below, with both evaluators; the end-of-training EvalHook would repeat it.
            return [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)] + [StepTimer()]

    seed_all_rng(0)  # DefaultTrainer seeds only through default_setup, which this check does not use
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    train_seconds = time.perf_counter() - start
    require(len(step_seconds) == iters, f"trained {len(step_seconds)} iterations, expected {iters}")
    metrics = trainer.storage.latest()
    loss = metrics["total_loss"][0]
    require(math.isfinite(loss), f"training loss is {loss}")

    # Checkpoint round trip: the final checkpoint loads into a fresh model with every tensor equal.
    final = Path(cfg.OUTPUT_DIR) / "model_final.pth"
    require(final.is_file(), f"no final checkpoint at {final}")
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(str(final))
    trained_state = trainer.model.state_dict()
    require(
        all(torch.equal(v, trained_state[k]) for k, v in fresh.state_dict().items()),
        "reloaded checkpoint differs from the trained model",
    )

    start = time.perf_counter()
    model = trainer.model.eval()
    results = {
        "coco_trained": evaluate(
            cfg, model, coco_name, COCOEvaluator(coco_name, output_dir=str(work / "eval"))
        ),
        "voc_trained": evaluate(cfg, model, voc_name, PascalVOCDetectionEvaluator(voc_name)),
    }
    eval_seconds = time.perf_counter() - start
    oracle_coco = evaluate(cfg, GroundTruthModel(coco_name), coco_name, COCOEvaluator(coco_name))
    oracle_voc = evaluate(cfg, GroundTruthModel(voc_name), voc_name, PascalVOCDetectionEvaluator(voc_name))
    for name, res in (("COCOEvaluator", oracle_coco), ("PascalVOCDetectionEvaluator", oracle_voc)):
        require(
            all(abs(v - 100.0) < 1e-6 for v in res.values()), f"{name} on ground-truth predictions gave {res}"
        )
    return {
        "config": config_path,
        **results,
        "coco_ground_truth": oracle_coco,
        "voc_ground_truth": oracle_voc,
        "final_total_loss": round(float(loss), 4),
        "iterations": iters,
        "seconds_first_iteration": round(step_seconds[0], 2),
        "seconds_per_iteration_after_first": (
            round(float(np.mean(step_seconds[1:])), 2) if iters > 1 else None
        ),
        "seconds_train_total": round(train_seconds, 1),
        "seconds_eval_trained_coco_and_voc": round(eval_seconds, 1),
    }


def quiet_detectron2_logs(verbose: bool) -> None:
    """Set up Detectron2's logger (so DefaultTrainer does not), showing warnings only unless verbose."""
    from detectron2.utils.logger import setup_logger

    if not verbose:
        # Expected from v0.6 code on current torch (see the README); they say nothing about this install.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release")

    for name in ("detectron2", "fvcore"):
        logger = setup_logger(name=name)
        for handler in logger.handlers:
            handler.setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the installed Detectron2 on CPU.")
    parser.add_argument("--smoke", action="store_true", help="only build models and run forward passes")
    parser.add_argument(
        "--route", default=None, help="install route to report (set by install_detectron2.sh)"
    )
    parser.add_argument("--iters", type=int, default=5, help="training iterations of the end-to-end check")
    parser.add_argument(
        "--config", choices=sorted(TRAIN_CONFIGS), default="fpn", help="model of the end-to-end check"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep datasets and outputs here")
    parser.add_argument("--verbose", action="store_true", help="show Detectron2's own logs")
    args = parser.parse_args(argv)

    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        print(
            f"check_detectron2: Detectron2 is not importable ({e}); run scripts/install_detectron2.sh",
            file=sys.stderr,
        )
        return 1
    quiet_detectron2_logs(args.verbose)
    info = install_info(args.route)
    start = time.perf_counter()
    try:
        report: dict[str, Any] = {"install": info, "smoke_total_loss": smoke()}
        report["seconds_smoke"] = round(time.perf_counter() - start, 1)
        if not args.smoke:
            if not info["compiled_ops"]:
                report["compiled_op_error"] = check_compiled_op_error()
            # pycocotools prints its summary tables to stdout; the report below has the numbers.
            quiet = contextlib.nullcontext() if args.verbose else contextlib.redirect_stdout(io.StringIO())
            with tempfile.TemporaryDirectory(prefix="check_detectron2_") as tmp, quiet:
                work = args.workdir or Path(tmp)
                report["end_to_end"] = end_to_end(work, args.iters, TRAIN_CONFIGS[args.config])
    except CheckFailed as e:
        print(f"check_detectron2: FAILED: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a crash inside Detectron2 is a failed check too; keep its traceback
        traceback.print_exc()
        print(f"check_detectron2: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    report["seconds_total"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))
    print(
        f"check_detectron2: OK: detectron2 {info['distribution']} (route {info['route']}, "
        f"compiled ops: {'yes' if info['compiled_ops'] else 'no'}) at {info['location']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
