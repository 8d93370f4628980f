"""The named evaluation suites of ``mochi suite``: which data, protocols and seeds each one runs.

This is the one place a suite is defined. A suite is a dataset (with the image size and splits its
protocol uses) and a list of steps; a seeded step runs once per seed. Every setting's source is in
``docs/protocols.md`` (linked per suite below); :func:`describe` prints them for ``mochi suite --list``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mochi.errors import ConfigError


@dataclass(frozen=True)
class Step:
    """One evaluation of a suite: ``task`` knn | linear | detection, its protocol and options.

    ``options`` are fields of the protocol's config dataclass (KnnConfig, MocoLinearConfig, SgdGridConfig,
    LbfgsConfig) or, for detection, of :class:`~mochi.eval.detection.DetectionConfig` (``config`` names
    the Detectron2 config). ``seeded``: run once per suite seed (else once, seed ``None``).
    """

    name: str
    task: str
    protocol: str
    options: dict[str, Any] = field(default_factory=dict)
    seeded: bool = True


@dataclass(frozen=True)
class Suite:
    """A dataset and its steps. ``data`` holds :class:`~mochi.eval.config.EvalData` fields (the dataset,
    splits, image size); ``needs_root``: the user must give ``--data-root`` (data not shipped here).
    Detection suites read Detectron2's builtin datasets, which Detectron2 finds under
    ``$DETECTRON2_DATASETS`` (its own convention; see docs/detect.md)."""

    name: str
    summary: str
    source: str  # docs/protocols.md anchor with the settings' sources
    data: dict[str, Any]
    steps: tuple[Step, ...]
    seeds: tuple[int, ...]
    needs_root: bool = False
    variants: dict[str, tuple[Step, ...]] = field(default_factory=dict)  # --variant NAME: other steps


KNN = Step("knn", "knn", "knn-weighted-vote", seeded=False)  # deterministic given the features
LBFGS = Step("linear-lbfgs", "linear", "lbfgs")
SGD_GRID = Step("linear-sgd-grid", "linear", "sgd-grid")
MOCO_LINEAR = Step("linear-moco", "linear", "moco")

SUITES: dict[str, Suite] = {
    "fashion-mnist": Suite(
        name="fashion-mnist",
        summary="CPU scale: the embedded Fashion-MNIST subset at 64 px (for runs pretrained at 32 px); kNN + "
        "lbfgs + sgd-grid probes",
        source="docs/protocols.md#fashion-mnist-subset",
        # 64 px, twice the pretraining size: the standard stem's last feature map is 2x2 instead of 1x1
        # (measured in docs/fashion_mnist_study.md, ninth round).
        data={"data": "fashion-mnist-embedded", "image_size": 64},
        steps=(KNN, LBFGS, SGD_GRID),
        seeds=(0, 1, 2),
    ),
    "in100": Suite(
        name="in100",
        summary="ImageNet-100 (CMC's 100 classes) at 224 px: kNN + the reference moco linear protocol + "
        "lbfgs / sgd-grid",
        source="docs/protocols.md#linear-classification",
        data={"data": "", "subset": "imagenet100", "train_split": "train", "test_split": "val"},
        steps=(KNN, MOCO_LINEAR, LBFGS, SGD_GRID),
        seeds=(0, 1, 2),
        needs_root=True,
    ),
    "in1k": Suite(
        name="in1k",
        summary="ImageNet-1k at 224 px: kNN + the reference moco linear protocol + lbfgs / sgd-grid",
        source="docs/protocols.md#linear-classification",
        data={"data": "", "train_split": "train", "test_split": "val"},
        steps=(KNN, MOCO_LINEAR, LBFGS, SGD_GRID),
        seeds=(0,),
        needs_root=True,
    ),
    "voc": Suite(
        name="voc",
        summary="PASCAL VOC07+12 -> VOC07 test, Faster R-CNN R50-C4, 24k iterations, 5 seeds",
        source="docs/protocols.md#pascal-voc",
        data={},
        steps=(Step("voc07+12-c4", "detection", "voc07_R50_C4_24k", {"config": "voc07_R50_C4_24k"}),),
        seeds=(0, 1, 2, 3, 4),
    ),
    "coco": Suite(
        name="coco",
        summary="COCO train2017 -> val2017, Mask R-CNN R50-C4 1x (variants: 2x, fpn)",
        source="docs/protocols.md#coco",
        data={},
        steps=(Step("coco-c4-1x", "detection", "coco_R50_C4_1x", {"config": "coco_R50_C4_1x"}),),
        seeds=(0,),
        variants={
            "2x": (Step("coco-c4-2x", "detection", "coco_R50_C4_2x", {"config": "coco_R50_C4_2x"}),),
            "fpn": (Step("coco-fpn-1x", "detection", "coco_R50_FPN_1x", {"config": "coco_R50_FPN_1x"}),),
        },
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConfigError(
            "suite", f"{name!r} is not a suite; choose one of {', '.join(SUITES)} (mochi suite --list)"
        )
    return SUITES[name]


def suite_steps(suite: Suite, variant: str | None) -> tuple[Step, ...]:
    """The steps to run: the suite's own, or those of ``variant``."""
    if variant is None:
        return suite.steps
    if variant not in suite.variants:
        choices = ", ".join(suite.variants) or "none"
        raise ConfigError(
            "variant", f"{variant!r} is not a variant of suite {suite.name}; choose one of {choices}"
        )
    return suite.variants[variant]


def describe() -> str:
    """Every suite, its steps and default seeds (``mochi suite --list``)."""
    lines = []
    for suite in SUITES.values():
        steps = ", ".join(f"{s.name}" + ("" if s.seeded else " (once)") for s in suite.steps)
        seeds = ",".join(map(str, suite.seeds))
        lines.append(f"{suite.name}: {suite.summary}")
        lines.append(f"  steps: {steps}; seeds: {seeds}; settings: {suite.source}")
        for name, steps_ in suite.variants.items():
            lines.append(f"  --variant {name}: {', '.join(s.name for s in steps_)}")
        if suite.needs_root:
            lines.append("  needs --data-root")
        elif not suite.data:
            lines.append("  data: Detectron2's builtin datasets under $DETECTRON2_DATASETS")
    return "\n".join(lines)
