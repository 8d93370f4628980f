"""Names every layer agrees on, importable without torch (the command line builds its options from them).

- :data:`ARCHS`: the supported torchvision ResNets and their shapes (:mod:`mochi.resnet` builds them).
- :data:`AUGMENTATIONS`: the pretraining pipelines (:mod:`mochi.transforms` builds them).
- :data:`ENCODERS`: the networks a two-encoder checkpoint can hold (MoCo query/key, DINO teacher/student).
- :data:`EXPORT_TARGETS`: the layouts ``mochi export`` writes.
- :data:`STEMS`: the ResNet stems a backbone can be built with.
- :data:`PRETRAIN_ADDED_FIELDS`: pretraining options added after runs were saved without them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """One torchvision ResNet constructor: block type, blocks per stage, groups, width per group."""

    bottleneck: bool
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64


# torchvision.models.<name>() for each supported name (torchvision's own resnet.py constructors).
ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(False, (2, 2, 2, 2)),
    "resnet34": ArchSpec(False, (3, 4, 6, 3)),
    "resnet50": ArchSpec(True, (3, 4, 6, 3)),
    "resnet101": ArchSpec(True, (3, 4, 23, 3)),
    "resnet152": ArchSpec(True, (3, 8, 36, 3)),
    "wide_resnet50_2": ArchSpec(True, (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": ArchSpec(True, (3, 4, 23, 3), 1, 128),
    "resnext50_32x4d": ArchSpec(True, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": ArchSpec(True, (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": ArchSpec(True, (3, 4, 23, 3), 64, 4),
}

# aug-plus: MoCo-v2's aug+; aug-plus-small: the same without blur, for <= 64 px images; grey-small: the
# small variant without the colour steps that leave grey pixels unchanged (saturation, hue, grayscale).
AUGMENTATIONS = ("aug-plus", "aug-plus-small", "grey-small")

ENCODERS = ("query", "key", "teacher", "student")

EXPORT_TARGETS = ("torchvision", "detectron2")
# ResNet stems: torchvision's 7×7 stride-2 conv1 + max-pool; the 32 px stem (3×3 stride-1 conv1, no max-pool)
# with padding 1 (ours, most CIFAR code) or padding 2 (solo-learn's CIFAR ResNets). Same tensor shapes.
STEMS = ("standard", "small", "small-pad2")

# Detection: BN choice of `mochi detect --norm` (auto: SyncBN / naiveSyncBN become BN in one process).
NORM_CHOICES = ("auto", "config", "BN", "SyncBN", "naiveSyncBN")

# Pretraining options added after earlier runs wrote their config.json, checkpoints and records, with the
# value that reproduces what those runs did: a saved config without the field is read with it (resume
# checks, replay, the recipe a result record names).
PRETRAIN_ADDED_FIELDS = {"symmetric": False}
