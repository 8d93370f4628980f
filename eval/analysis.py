"""Alignment and uniformity of an encoder's embeddings (Wang & Isola 2020), and ``mochi analyze``'s runner.

The math is two pure functions (:func:`alignment`, :func:`uniformity`) on L2-normalised rows; the defaults
(alpha = 2, t = 2) and their source are in docs/protocols.md#alignment-and-uniformity. Lower is better for
both: aligned positives are close, uniform embeddings spread over the sphere.

:func:`analyze` measures one backbone on a fixed seeded subset of a split, two views per image drawn with
the *pretraining* augmentation (:func:`mochi.transforms.build_augmentation`, taken from a mochi
checkpoint's saved config), and returns one record per embedding: ``backbone`` (the pooled ResNet
features) and, when the checkpoint holds MoCo's projection head, ``head`` (the query encoder's ``fc``,
rebuilt from its tensors). Records are returned, not written: the caller writes them once every checkpoint
has been measured, so a failed run writes nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mochi import distributed as dist_utils
from mochi import layout
from mochi.errors import MochiError
from mochi.transfer import inspect_checkpoint, read_checkpoint
from mochi.transforms import TwoCrops, build_augmentation

from .backbones import EvalBackbone
from .config import AnalysisConfig, BackboneSpec, check_analysis, check_backbone
from .data import open_split
from .records import make_record

TASK = "analysis"
PROTOCOL = "alignment-uniformity"
DEFAULT_AUG = ("aug-plus", 224)  # what a checkpoint without a mochi config is measured with


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Mean ``‖x_i − y_i‖₂^alpha`` over the positive pairs ``(x_i, y_i)``; ``x, y: (N, D)``.

    Rows are L2-normalised first (a no-op for unit rows). Identical views give 0; the largest value,
    ``2^alpha``, is every pair antipodal.
    """
    if x.shape != y.shape or x.ndim != 2 or len(x) == 0:
        raise ValueError(
            f"alignment needs two (N, D) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    x, y = F.normalize(x.double(), dim=1), F.normalize(y.double(), dim=1)
    return float((x - y).norm(p=2, dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """``log`` of the mean of ``exp(−t‖x_i − x_j‖₂²)`` over the pairs ``i < j`` (each unordered pair once,
    as ``torch.pdist`` gives them in the authors' reference code); ``x: (N, D)``, N >= 2.

    Rows are L2-normalised first. Computed as a log-sum-exp in float64, so it stays finite for spread-out
    points where every ``exp`` term underflows. 0 is every point equal; lower is more uniform.
    """
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"uniformity needs an (N, D) tensor with N >= 2, got {tuple(x.shape)}")
    sq = torch.pdist(F.normalize(x.double(), dim=1), p=2).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(len(sq)))


# ---------------------------------------------------------------------------------------------------------
# Reading what a checkpoint says about itself


def build_head(head: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """MoCo's projection head from its tensors: ``fc.0`` / ``fc.2`` -> Linear-ReLU-Linear (MoCo-v2's MLP),
    ``fc`` -> Linear; None when ``head`` holds neither (no head saved, or another framework's)."""
    fc = {k[3:]: v for k, v in head.items() if k.startswith("fc.")}
    if "0.weight" in fc and "2.weight" in fc:
        first, second = _linear(fc, "0."), _linear(fc, "2.")
        return nn.Sequential(first, nn.ReLU(inplace=True), second)
    if "weight" in fc:
        return _linear(fc, "")
    return None


def _linear(tensors: Mapping[str, torch.Tensor], prefix: str) -> nn.Linear:
    weight = tensors[prefix + "weight"]
    bias = tensors.get(prefix + "bias")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.load_state_dict({"weight": weight, **({"bias": bias} if bias is not None else {})})
    return layer


def checkpoint_facts(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """What a checkpoint says about its pretraining: ``aug`` / ``image_size`` from a mochi checkpoint's
    saved config, ``epoch`` (epochs done) and, for a mid-epoch mochi checkpoint, ``step``."""
    obj, _ = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    facts: dict[str, Any] = {}
    config = layout.declared_config(obj)
    for key in ("aug", "image_size"):
        if key in config:
            facts[key] = config[key]
    if isinstance(obj, Mapping) and isinstance(obj.get("epoch"), int):
        facts["epoch"] = obj["epoch"]
        meta = obj.get(layout.META_KEY)
        if isinstance(meta, Mapping) and isinstance(meta.get("step"), int):
            facts["step"] = meta["step"]
    return facts


# ---------------------------------------------------------------------------------------------------------
# The measurement


def _subset(n: int, limit: int, seed: int) -> np.ndarray:
    # Seeded, sorted, and independent of the backbone: every checkpoint sees the same images.
    return np.sort(np.random.default_rng(seed).permutation(n)[: min(limit, n)])


@torch.no_grad()
def _embed(
    trunk: nn.Module, head: nn.Module | None, dataset, indices: np.ndarray, views: TwoCrops,
    cfg: AnalysisConfig, device: torch.device,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """``{"backbone": (view 1, view 2), "head": ...}``: ``(N, D)`` float32 CPU rows, not yet normalised."""
    out: dict[str, tuple[list, list]] = {"backbone": ([], [])}
    if head is not None:
        out["head"] = ([], [])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the same two views of each image for every checkpoint
        for start in range(0, len(indices), cfg.batch_size):
            pairs = [views(dataset[int(i)][0]) for i in indices[start : start + cfg.batch_size]]
            for v in range(2):
                batch = torch.stack([p[v] for p in pairs]).to(device)
                feats = trunk(batch)
                out["backbone"][v].append(feats.float().cpu())
                if head is not None:
                    out["head"][v].append(head(feats).float().cpu())
    return {k: (torch.cat(a), torch.cat(b)) for k, (a, b) in out.items()}


def analyze(
    spec: BackboneSpec, cfg: AnalysisConfig, data: str, *, data_root: str | None = None,
    subset: str | None = None, dataset=None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Alignment and uniformity of ``spec``'s backbone features (and projection head, when saved) on
    ``cfg.limit`` images of ``data``'s ``cfg.split``; one record per embedding.

    Alignment is over the two views of each image; uniformity is the mean of the two views' uniformities
    (as the authors' reference loss averages them). ``dataset``: an already opened split (``mochi analyze``
    opens it once for all checkpoints).
    """
    check_backbone(spec)
    check_analysis(cfg)
    if dataset is None:
        dataset = open_split(data, cfg.split, root=data_root, subset=subset)
    if len(dataset) < 2:
        raise MochiError(f"{data} ({cfg.split}) holds {len(dataset)} image: uniformity needs at least 2")
    start = time.perf_counter()
    facts = checkpoint_facts(spec.checkpoint, spec.trust_checkpoint) if spec.checkpoint else {}
    aug = cfg.aug or facts.get("aug", DEFAULT_AUG[0])
    image_size = cfg.image_size or facts.get("image_size", DEFAULT_AUG[1])
    backbone: EvalBackbone = spec.load()
    head = None
    if spec.checkpoint is not None:
        _, tensors, _ = inspect_checkpoint(
            spec.checkpoint, encoder=spec.encoder, prefix=spec.prefix, arch=spec.arch,
            trust_checkpoint=spec.trust_checkpoint,
        )  # fmt: skip
        head = build_head(tensors)
        width = next(head.parameters()).shape[1] if head is not None else backbone.feature_dim
        if width != backbone.feature_dim:
            raise MochiError(
                f"{spec.checkpoint}: the projection head takes {width} features but the {backbone.arch} "
                f"backbone gives {backbone.feature_dim}; the file is inconsistent"
            )
    device = dist_utils.resolve_device(cfg.device)
    trunk = backbone.trunk().to(device).eval()
    head = head.to(device).eval() if head is not None else None
    indices = _subset(len(dataset), cfg.limit, cfg.seed)
    views = TwoCrops(build_augmentation(aug, image_size))
    embeddings = _embed(trunk, head, dataset, indices, views, cfg, device)
    wall = time.perf_counter() - start

    evaluated = {**backbone.evaluated, **{k: facts[k] for k in ("epoch", "step") if k in facts}}
    identity = dataset.identity()
    data_block = {
        "dataset": identity.get("name", data),
        "train": {**identity, "split": cfg.split},
        "subset": {"num_images": len(indices)},
    }
    records = []
    for name, (x, y) in embeddings.items():
        metrics = {
            "align": alignment(x, y, cfg.alpha),
            "uniform": (uniformity(x, cfg.t) + uniformity(y, cfg.t)) / 2,
            "dim": int(x.shape[1]),
        }
        hyper = {
            "embedding": name, "alpha": cfg.alpha, "t": cfg.t, "augmentation": aug, "image_size": image_size,
            "subset": len(indices),
        }  # fmt: skip
        records.append(
            make_record(
                task=TASK,
                protocol=PROTOCOL,
                evaluated=evaluated,
                data=data_block,
                hyperparameters=hyper,
                metrics=metrics,
                seed=cfg.seed,
                wall_time_s=wall,
            )  # fmt: skip
        )
    return records
