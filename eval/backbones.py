"""The backbone an evaluation runs on: a checkpoint read through :mod:`mochi.transfer`, random init, or the
raw pixels themselves (the baseline any learned feature has to beat).

The result is an untouched torchvision ResNet (or, for pixels, a flatten) plus two small dicts:
``evaluated`` (what goes into every result record) and ``identity`` (what keys the feature cache: content
hash, encoder, arch, stem).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mochi.errors import ConfigError, MochiError
from mochi.transfer import build_backbone, build_torchvision_resnet, load_backbone

from .config import BackboneSpec

__all__ = ["BackboneSpec", "EvalBackbone", "Pixels", "load_eval_backbone"]


class Pixels(nn.Module):
    """The raw-pixel "backbone": ``(B, C, H, W) -> (B, C·H·W)``, the evaluation transform's output as is
    (resized to the evaluation size and normalised, like every backbone's input). No parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@dataclass
class EvalBackbone:
    """A ResNet whose ``fc`` is still torchvision's; :meth:`trunk` gives the pooled-feature network."""

    model: nn.Module
    evaluated: dict[str, Any]
    identity: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.evaluated["arch"]

    feature_dim: int = 0  # D of the pooled features (fc's input width); 0: known from the images only

    def __post_init__(self) -> None:
        if isinstance(getattr(self.model, "fc", None), nn.Linear):
            self.feature_dim = int(self.model.fc.in_features)

    def trunk(self) -> nn.Module:
        """``(B, 3, H, W) -> (B, D)`` pooled features: the model's own layers up to the average pool.

        The returned module shares the model's layers (no copy) and leaves ``model`` untouched.
        """
        if isinstance(self.model, Pixels):
            return self.model
        layers = [m for name, m in self.model.named_children() if name != "fc"]
        return nn.Sequential(*layers, nn.Flatten(1))


def _label(path: Path) -> str:
    # "moco/checkpoint_0005.pth.tar" tells runs apart where the bare file name would not.
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _pretraining_meta(path: Path) -> tuple[dict[str, Any] | None, dict[str, int] | None]:
    """The config a mochi pretraining checkpoint was trained with (``mochi.config``) and how far it got
    (``{"epoch": completed epochs, "step": steps into the next, "steps_per_epoch"}``), or Nones for files of
    other origins. Memory-mapped: the tensors are not read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # other formats and pickles: no pretraining config to report, not an error here
        return None, None
    meta = ckpt.get("mochi") if isinstance(ckpt, dict) else None
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        return None, None
    progress = None
    if isinstance(ckpt.get("epoch"), int):
        progress = {"epoch": ckpt["epoch"], "step": int(meta.get("step") or 0)}
        if isinstance(meta.get("steps_per_epoch"), int):
            progress["steps_per_epoch"] = meta["steps_per_epoch"]
    return dict(config), progress


def load_eval_backbone(
    checkpoint: str | os.PathLike | None = None,
    *,
    random_init: bool = False,
    pixels: bool = False,
    arch: str | None = None,
    small_stem: bool = False,
    seed: int = 0,
    encoder: str | None = None,
    prefix: str | None = None,
    stem: str | None = None,
    trust_checkpoint: bool = False,
) -> EvalBackbone:
    """Load ``checkpoint`` (any format :func:`mochi.transfer.load_backbone` reads), or build a random-init
    ``arch`` (``small_stem`` picks the stem; torch seeded with ``seed``) as a baseline, or with ``pixels``
    the raw-pixel baseline (:class:`Pixels`)."""
    if sum((random_init, pixels, checkpoint is not None)) != 1:
        raise MochiError(
            "pass a checkpoint path, --random-init (with --arch) or --pixels: exactly one of them"
        )
    if pixels:
        evaluated = {"checkpoint": None, "random_init": False, "pixels": True, "label": "raw pixels"}
        evaluated.update(arch="pixels", stem=None)
        return EvalBackbone(Pixels(), evaluated, {"pixels": True})
    if random_init:
        if arch is None:
            raise ConfigError("arch", "is needed with `random_init` to know what to build (e.g. resnet18)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_torchvision_resnet(arch, small_stem)
        stem = "small" if small_stem else "standard"
        evaluated = {
            "checkpoint": None,
            "random_init": True,
            "label": f"random-init {arch}" + (" (small stem)" if small_stem else ""),
            "arch": arch,
            "stem": stem,
            "seed": seed,
        }
        # torchvision's init draws from torch's RNG: a different torch may build different weights.
        identity = {"random_init": seed, "arch": arch, "stem": stem, "torch": torch.__version__}
        return EvalBackbone(model, evaluated, identity)
    path = Path(checkpoint)
    if not path.is_file():
        raise MochiError(
            f"checkpoint not found: {path}. Pass the path of a checkpoint file, or --random-init"
        )
    state, report = load_backbone(
        path, encoder=encoder, prefix=prefix, arch=arch, stem=stem, trust_checkpoint=trust_checkpoint
    )
    model = build_backbone(report, state)
    evaluated = {
        "checkpoint": str(path),
        "label": _label(path),
        "sha256": report.sha256,
        "format": report.format,
        "prefix": report.prefix,
        "arch": report.arch,
        "stem": report.stem,
        "encoder": report.encoder,
        "random_init": False,
    }
    pretraining, progress = _pretraining_meta(path)
    if pretraining is not None:  # lets tables group the seeds of one pretraining recipe (rows="method")
        evaluated["pretraining"] = pretraining
    if progress is not None:  # an earlier checkpoint of a run is not another seed of its last one
        evaluated["pretraining_progress"] = progress
    identity = {"sha256": report.sha256, "encoder": report.encoder, "prefix": report.prefix}
    identity.update(arch=report.arch, stem=report.stem)
    return EvalBackbone(model, evaluated, identity)
