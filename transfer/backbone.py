"""The loader every evaluation uses: any framework's ResNet checkpoint → torchvision state dict + report.

Nothing loads silently: :func:`load_backbone` raises :class:`MochiError` when a backbone tensor is
missing, unexpected or mis-shaped, and the :class:`BackboneReport` says what was found and where.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mochi.constants import STEMS
from mochi.errors import MochiError
from mochi.io import sha256_file
from mochi.resnet import ARCHS, ArchInfo, build_torchvision_resnet, compare, infer_arch, load_strict_except_fc

from .declared import named_arch
from .formats import Extraction, check_plain_stem, extract
from .loading import read_checkpoint

FORMAT_NAMES = {
    "mochi": "mochi pretraining checkpoint (reference MoCo layout)",
    "moco": "MoCo reference checkpoint",
    "mmselfsup": "MMSelfSup / MMPreTrain",
    "vissl": "VISSL (classy_state_dict trunk)",
    "timm": "timm / wrapped torchvision state dict",
    "torchvision-references": "torchvision reference scripts (references/classification/train.py)",
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
    stem: str  # "standard" (7×7 conv1 + max-pool), "small" / "small-pad2" (3×3 stride-1 conv1, padding 1 / 2)
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
    stem_source: str = (
        "tensors"  # what decided the stem: tensors, checkpoint config, args.json, --stem, assumed
    )

    @property
    def small_stem(self) -> bool:
        return self.stem != "standard"

    @property
    def stem_padding(self) -> int:
        return 2 if self.stem == "small-pad2" else 1

    def problems(self) -> list[str]:
        out = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                out.append(f"{len(items)} {label} backbone tensors ({_preview(items)})")
        if self.mismatched:
            out.append(f"{len(self.mismatched)} tensors of the wrong shape ({_preview(self.mismatched)})")
        if self.declared_arch and not same_arch(self.declared_arch, self.arch):
            out.append(
                f"the checkpoint declares arch {self.declared_arch} but mochi builds a torchvision "
                f"{self.arch} from its tensors: not the same network (variants such as anti-aliased or "
                "blur-pool ResNets have no tensor that tells them apart, and are not supported)"
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
            ("arch", f"{self.arch}, stem: {self.stem} ({_stem_text(self.stem_source)})"),
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


def same_arch(declared: str, arch: str) -> bool:
    """Whether a declared architecture name is the torchvision ``arch`` we build.

    timm's pretrained tags (``resnet50.a1_in1k``) and ``tv_`` names are the same network; a name outside the
    ResNet family (not ``res…`` with a depth) says nothing about these tensors and is not held against them.
    """
    name = declared.lower().split(".")[0].removeprefix("tv_").removeprefix("torchvision.models.")
    if not re.match(r"^(wide_)?res\w*\d", name):
        return True
    return name == arch


def _stem_text(source: str) -> str:
    if source == "assumed":
        return (
            "assumed: a 3×3 conv1 with no settings saying its padding; pass --stem small (padding 1) or "
            "--stem small-pad2 (solo-learn CIFAR) to choose"
        )
    return f"from {source}"


def _beside_settings(path: Path) -> tuple[dict[str, Any], str] | None:
    """solo-learn writes its run settings as args.json beside each checkpoint."""
    settings = path.parent / "args.json"
    try:
        data = json.loads(settings.read_text())
    except (OSError, ValueError):
        return None
    return (data, settings.name) if isinstance(data, dict) else None


def _beside_arch(path: Path) -> str | None:
    """The architecture named beside the file: timm hub config.json, solo-learn args.json (backbone.name)."""
    for name in ("config.json", "args.json"):
        try:
            data = json.loads((path.parent / name).read_text())
        except (OSError, ValueError):
            continue
        arch = named_arch(data)
        if arch:
            return arch
    return None


def _resolve_stem(info: ArchInfo, ex: Extraction, path: Path, stem: str | None) -> tuple[str, str]:
    """The stem to build and what decided it: ``--stem``, the checkpoint's config, args.json, or assumed."""
    if stem is not None and stem not in STEMS:
        raise MochiError(f"--stem {stem!r}: choose one of {', '.join(STEMS)}")
    if info.stem == "standard":
        if stem not in (None, "standard"):
            raise MochiError(
                f"--stem {stem}: the checkpoint's conv1 is 7×7, the standard stem; leave --stem out"
            )
        return "standard", "tensors"
    if stem == "standard":
        raise MochiError("--stem standard: the checkpoint's conv1 is 3×3, a small stem; pass --stem small")
    if stem is not None:
        return stem, "--stem"
    if ex.declared_small_stem:
        return "small", "checkpoint config"
    found = _beside_settings(path)
    if found is not None:
        data, name = found
        dataset = (data.get("data") or {}).get("dataset") if isinstance(data.get("data"), dict) else None
        if dataset in ("cifar10", "cifar100"):
            return "small-pad2", f"{name}: solo-learn data.dataset {dataset}"
    return "small", "assumed"


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
    stem: str | None = None,
    trust_checkpoint: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], BackboneReport]:
    """Read ``path`` and report on its backbone without judging it: ``(backbone, head, report)``.

    Raises :class:`MochiError` only when the file cannot be read or holds no recognisable ResNet;
    missing/unexpected tensors are left in the report (see :func:`load_backbone`).
    """
    obj, kind = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    ex = extract(obj, kind, encoder=encoder, prefix=prefix, what=str(path))
    info = _resolve_arch(ex, arch)
    stem_name, stem_source = _resolve_stem(info, ex, Path(path), stem)
    backbone, cmp = compare(ex.backbone, info)
    report = BackboneReport(
        source=str(Path(path)),
        sha256=sha256_file(path),
        format=ex.format,
        container=ex.container,
        prefix=ex.prefix,
        encoder=ex.encoder,
        arch=info.arch,
        stem=stem_name,
        num_loaded=len(backbone) - len(cmp.filled),
        missing=cmp.missing,
        unexpected=cmp.unexpected,
        mismatched=cmp.mismatched,
        head_dropped=sorted(ex.head),
        ignored=ex.ignored,
        filled=cmp.filled,
        declared_arch=ex.declared_arch or _beside_arch(Path(path)),
        declared_small_stem=ex.declared_small_stem,
        stem_source=stem_source,
    )
    return backbone, ex.head, report


def load_backbone(
    path: str | os.PathLike,
    *,
    encoder: str | None = None,
    prefix: str | None = None,
    arch: str | None = None,
    stem: str | None = None,
    trust_checkpoint: bool = False,
) -> tuple[dict[str, torch.Tensor], BackboneReport]:
    """Load any supported ResNet checkpoint as a torchvision state dict (no ``fc``) and a report.

    ``encoder``: ``query``/``key`` for MoCo-style pairs (online / momentum network; default query),
    ``teacher``/``student`` for DINO (default teacher). ``prefix`` overrides prefix detection;
    ``arch`` asserts the architecture (inferred from the tensors otherwise). Raises
    :class:`MochiError` if any backbone tensor is missing, unexpected or of the wrong shape. ``stem``
    chooses a 3×3 conv1's stem (``small`` or ``small-pad2``), which the tensors cannot tell; otherwise the
    checkpoint's config or a solo-learn ``args.json`` beside it decides, and the report says so.
    """
    backbone, _, report = inspect_checkpoint(
        path, encoder=encoder, prefix=prefix, arch=arch, stem=stem, trust_checkpoint=trust_checkpoint
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
    padding = 1
    if isinstance(report_or_arch, BackboneReport):
        arch = report_or_arch.arch
        small = report_or_arch.small_stem if small_stem is None else small_stem
        padding = report_or_arch.stem_padding
    else:
        arch, small = report_or_arch, bool(small_stem)
    model = build_torchvision_resnet(arch, small, stem_padding=padding)
    if state_dict is not None:
        load_strict_except_fc(model, state_dict)
    return model
