"""``mochi export``: write a checkpoint's backbone as a torchvision state dict or a Detectron2 ``.pkl``."""

from __future__ import annotations

import os
from pathlib import Path

from mochi import __version__
from mochi.constants import EXPORT_TARGETS
from mochi.errors import MochiError
from mochi.io import atomic_torch_save

from .backbone import BackboneReport, inspect_checkpoint
from .detectron2.names import write_detectron2_pkl

TARGETS = EXPORT_TARGETS


def default_author(report: BackboneReport) -> str:
    """``__author__`` of a Detectron2 export: names the source file, its layout and its hash."""
    where = f"{report.prefix or 'top level'}" + (f", {report.encoder} encoder" if report.encoder else "")
    return (
        f"mochi {__version__} export of {Path(report.source).name} "
        f"({report.format}, {where}; sha256 {report.sha256[:16]})"
    )


def export_backbone(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str,
    encoder: str | None = None,
    prefix: str | None = None,
    arch: str | None = None,
    stem: str | None = None,
    keep_head: bool = False,
    trust_checkpoint: bool = False,
    force: bool = False,
    author: str | None = None,
) -> BackboneReport:
    """Convert ``path``'s backbone and write it to ``out`` atomically; returns the load report.

    ``to="torchvision"``: a plain state dict that ``torchvision.models.<arch>()`` loads with only
    ``fc.weight``/``fc.bias`` missing (small-stem backbones need
    ``build_torchvision_resnet(arch, small_stem=True)``). ``to="detectron2"``: the ``.pkl`` of
    docs/protocols.md#converting-weights-to-detectron2; the head is dropped unless ``keep_head``. An
    existing ``out`` is kept unless ``force``.
    """
    if to not in TARGETS:
        raise MochiError(f"--to {to!r}: choose one of {', '.join(TARGETS)}")
    out = Path(out)
    if out.exists() and not force:
        raise MochiError(f"{out} already exists; pass --force to overwrite it")
    if to == "detectron2" and out.suffix != ".pkl":
        raise MochiError(
            f"{out}: Detectron2 reads weights as a pickle only from files ending in .pkl; "
            "name the output *.pkl"
        )
    if keep_head and to != "detectron2":
        raise MochiError("--keep-head applies to --to detectron2 only; a torchvision export never has a head")
    backbone, head, report = inspect_checkpoint(
        path, encoder=encoder, prefix=prefix, arch=arch, stem=stem, trust_checkpoint=trust_checkpoint
    )
    report.raise_if_bad()
    if to == "torchvision":
        atomic_torch_save(backbone, out)
        return report
    if report.small_stem:
        raise MochiError(
            f"{path}: a small-stem backbone (3×3 stride-1 conv1, no max-pool) does not fit Detectron2's "
            "ResNet stem (7×7 stride-2 conv1 + max-pool); export it with --to torchvision instead"
        )
    weights = dict(backbone)
    if keep_head:
        weights.update(head)
    write_detectron2_pkl(weights, out, author or default_author(report))
    return report
