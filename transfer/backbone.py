"""The loader every evaluation uses: any framework's ResNet checkpoint → torchvision state dict + report.

Nothing loads silently: :func:`load_backbone` raises :class:`MochiError` when a backbone tensor is
missing, unexpected or mis-shaped, and the :class:`BackboneReport` says what was found and where.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mochi.errors import MochiError
from mochi.io import sha256_file
from mochi.resnet import ARCHS, ArchInfo, build_torchvision_resnet, compare, infer_arch, load_strict_except_fc

from .formats import Extraction, check_plain_stem, extract
from .loading import read_checkpoint

FORMAT_NAMES = {
    "mochi": "mochi pretraining checkpoint (reference MoCo layout)",
    "moco": "MoCo reference checkpoint",
    "mmselfsup": "MMSelfSup / MMPreTrain",
    "vissl": "VISSL (classy_state_dict trunk)",
    "timm": "timm / wrapped torchvision state dict",
    "torchvision": "torchvision state dict",
    "safetensors": "safetensors state dict (timm / Hugging Face hub weights)",
    "detectron2": "Detectron2 .pkl",
    "detectron2-checkpoint": "Detectron2 model checkpoint",
    "generic": "ResNet under a custom prefix",
}


@dataclass
class BackboneReport:
    """What :func:`load_backbone` found. ``ok`` is False when any backbone tensor is missing/unexpected."""

    source: str
    sha256: str
    format: str
    container: str  # path of nested dict keys to the state dict, e.g. "state_dict"; "" for a flat file
    prefix: str  # prefix stripped inside that state dict, e.g. "module.encoder_q."
    encoder: str | None  # query / key (momentum) / teacher / student; None for single-encoder files
    arch: str
    stem: str  # "standard" (7×7 conv1 + max-pool) or "small" (3×3 stride-1 conv1, no max-pool)
    num_loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    head_dropped: list[str] = field(default_factory=list)
    ignored: dict[str, int] = field(
        default_factory=dict
    )  # other tensors (momentum encoder, queue, optimizer state) by group
    filled: list[str] = field(default_factory=list)  # num_batches_tracked absent from old files, set to 0
    declared_arch: str | None = None
    declared_small_stem: bool | None = None

    @property
    def small_stem(self) -> bool:
        return self.stem == "small"

    def problems(self) -> list[str]:
        out = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                out.append(f"{len(items)} {label} backbone tensors ({_preview(items)})")
        if self.mismatched:
            out.append(f"{len(self.mismatched)} tensors of the wrong shape ({_preview(self.mismatched)})")
        if self.declared_arch in ARCHS and self.declared_arch != self.arch:
            out.append(
                f"the checkpoint declares arch {self.declared_arch} but its tensors form a {self.arch}"
            )
        if self.declared_small_stem is not None and self.declared_small_stem != self.small_stem:
            out.append(
                f"the checkpoint declares small_stem={self.declared_small_stem} but its stem is {self.stem}"
            )
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def raise_if_bad(self) -> None:
        problems = self.problems()
        if problems:
            raise MochiError(
                f"{self.source}: the {self.arch} backbone does not load cleanly: {'; '.join(problems)}. "
                "Check --encoder / --prefix / --arch (mochi inspect lists every tensor concerned)"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["problems"] = self.problems()
        return d

    def to_text(self) -> str:
        rows = [
            ("checkpoint", self.source),
            ("sha256", self.sha256),
            ("format", _format_text(self.format)),
            ("container", self.container or "(top level)"),
            ("prefix", self.prefix or "(none)"),
            ("encoder", self.encoder or "(single encoder)"),
            ("arch", f"{self.arch}, stem: {self.stem}"),
            ("loaded", f"{self.num_loaded} backbone tensors"),
            ("head", f"{len(self.head_dropped)} tensors (dropped){_list(self.head_dropped)}"),
            ("ignored", ", ".join(f"{k} ({n})" for k, n in sorted(self.ignored.items())) or "none"),
            ("missing", f"{len(self.missing)}{_list(self.missing)}"),
            ("unexpected", f"{len(self.unexpected)}{_list(self.unexpected)}"),
        ]
        if self.mismatched:
            rows.append(("shape", f"{len(self.mismatched)}{_list(self.mismatched)}"))
        if self.filled:
            rows.append(
                ("filled", f"{len(self.filled)} num_batches_tracked buffers absent from the file, set to 0")
            )
        if self.declared_arch:
            rows.append(("declared", self.declared_arch))
        return "\n".join(f"{k:<11} {v}" for k, v in rows)


def _format_text(fmt: str) -> str:
    name = FORMAT_NAMES.get(fmt, fmt)
    return fmt if name == fmt else f"{fmt} ({name})"


def _preview(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", … +{len(items) - n} more" if len(items) > n else "")


def _list(items: list[str]) -> str:
    return f": {_preview(items, 8)}" if items else ""


def _resolve_arch(ex: Extraction, arch: str | None) -> ArchInfo:
    check_plain_stem(ex.backbone)
    if arch is not None and arch not in ARCHS:
        raise MochiError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")
    try:
        info = infer_arch(ex.backbone)
    except MochiError:
        if arch is None:
            raise
        conv1 = ex.backbone.get("conv1.weight")
        small = conv1 is not None and conv1.shape[-1] == 3
        return ArchInfo(arch, "small" if small else "standard")
    if arch is not None and info.arch != arch:
        raise MochiError(
            f"wrong architecture: the checkpoint holds a {info.arch} backbone "
            f"but --arch {arch} was requested; "
            f"pass --arch {info.arch} or leave --arch out"
        )
    return info


def inspect_checkpoint(
    path: str | os.PathLike,
    *,
    encoder: str | None = None,
    prefix: str | None = None,
    arch: str | None = None,
    trust_checkpoint: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], BackboneReport]:
    """Read ``path`` and report on its backbone without judging it: ``(backbone, head, report)``.

    Raises :class:`MochiError` only when the file cannot be read or holds no recognisable ResNet;
    missing/unexpected tensors are left in the report (see :func:`load_backbone`).
    """
    obj, kind = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    ex = extract(obj, kind, encoder=encoder, prefix=prefix, what=str(path))
    info = _resolve_arch(ex, arch)
    backbone, cmp = compare(ex.backbone, info)
    report = BackboneReport(
        source=str(Path(path)),
        sha256=sha256_file(path),
        format=ex.format,
        container=ex.container,
        prefix=ex.prefix,
        encoder=ex.encoder,
        arch=info.arch,
        stem=info.stem,
        num_loaded=len(backbone) - len(cmp.filled),
        missing=cmp.missing,
        unexpected=cmp.unexpected,
        mismatched=cmp.mismatched,
        head_dropped=sorted(ex.head),
        ignored=ex.ignored,
        filled=cmp.filled,
        declared_arch=ex.declared_arch,
        declared_small_stem=ex.declared_small_stem,
    )
    return backbone, ex.head, report


def load_backbone(
    path: str | os.PathLike,
    *,
    encoder: str | None = None,
    prefix: str | None = None,
    arch: str | None = None,
    trust_checkpoint: bool = False,
) -> tuple[dict[str, torch.Tensor], BackboneReport]:
    """Load any supported ResNet checkpoint as a torchvision state dict (no ``fc``) and a report.

    ``encoder``: ``query``/``key`` for MoCo-style pairs (online / momentum network; default query),
    ``teacher``/``student`` for DINO (default teacher). ``prefix`` overrides prefix detection;
    ``arch`` asserts the architecture (inferred from the tensors otherwise). Raises
    :class:`MochiError` if any backbone tensor is missing, unexpected or of the wrong shape.
    """
    backbone, _, report = inspect_checkpoint(
        path, encoder=encoder, prefix=prefix, arch=arch, trust_checkpoint=trust_checkpoint
    )
    report.raise_if_bad()
    return backbone, report


def build_backbone(
    report_or_arch: BackboneReport | str,
    state_dict: dict[str, torch.Tensor] | None = None,
    *,
    small_stem: bool | None = None,
) -> nn.Module:
    """A torchvision ResNet for ``report_or_arch``, with ``state_dict`` loaded strictly except ``fc``.

    With a report, the architecture and stem come from it; with an arch name, ``small_stem``
    (default False) picks the stem. ``fc`` keeps torchvision's initialisation: replace it for your task.
    """
    if isinstance(report_or_arch, BackboneReport):
        arch = report_or_arch.arch
        small = report_or_arch.small_stem if small_stem is None else small_stem
    else:
        arch, small = report_or_arch, bool(small_stem)
    model = build_torchvision_resnet(arch, small)
    if state_dict is not None:
        load_strict_except_fc(model, state_dict)
    return model
