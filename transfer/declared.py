"""What architecture a checkpoint says it holds, read from the file's own settings and never from its tensors.

The tensors cannot tell some networks apart (timm's anti-aliased ``resnetaa50`` has exactly ``resnet50``'s
tensors; MMPreTrain's ``style='caffe'`` ResNet moves a stride), so the name a checkpoint gives is checked
against what mochi builds. Sources: our own config, timm's ``arch``, an ``args`` Namespace (DINO, MoCo,
timm ``train.py``, torchvision references), Lightning ``hyper_parameters``, and mmengine's ``meta.cfg`` text.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Any

from mochi import layout


def named_arch(settings: Any) -> str | None:
    """The architecture a settings object names: ``arch`` (MoCo, DINO, timm), ``model`` (timm train.py,
    torchvision references), ``backbone`` / ``backbone.name`` (solo-learn), ``architecture`` (timm hub)."""
    if isinstance(settings, argparse.Namespace):
        settings = vars(settings)
    if not isinstance(settings, Mapping):
        return None
    for key in ("arch", "architecture", "model", "model_name", "backbone"):
        value = settings.get(key)
        if isinstance(value, Mapping):
            value = value.get("name")
        if isinstance(value, str) and value:
            return value
    return None


def _openmmlab_arch(cfg: str) -> str | None:
    """The backbone an mmengine ``meta.cfg`` text names: ``backbone=dict(type='ResNet', depth=50, ...)``.

    MMPreTrain's ``style='caffe'`` puts the stride in the 1×1 conv: the same tensors as torchvision's
    (``style='pytorch'``, stride in the 3×3) but another network, so it is named in the result.
    """
    start = re.search(r"backbone\s*=\s*dict\(", cfg)
    if start is None:
        return None
    depth, i = 1, start.end()
    while i < len(cfg) and depth:  # the backbone's own dict(...), nested dicts included
        depth += {"(": 1, ")": -1}.get(cfg[i], 0)
        i += 1
    body = cfg[start.end() : i]
    kind = re.search(r"type\s*=\s*['\"](?:[\w]+\.)*(\w+)['\"]", body)
    layers = re.search(r"\bdepth\s*=\s*(\d+)", body)
    if kind is None or layers is None or not kind.group(1).lower().startswith("res"):
        return None
    arch = f"{kind.group(1).lower()}{layers.group(1)}"  # ResNet depth=50 → resnet50
    style = re.search(r"\bstyle\s*=\s*['\"](\w+)['\"]", body)
    return f"{arch} (style='{style.group(1)}')" if style and style.group(1) != "pytorch" else arch


def declared(obj: Any) -> tuple[str | None, bool | None]:
    if not isinstance(obj, Mapping):
        return None, None
    cfg = layout.declared_config(obj)
    small = cfg.get("small_stem")
    arch = cfg.get("arch") if isinstance(cfg.get("arch"), str) else None
    # The file's own word first (timm's arch), then its saved settings (args, Lightning hyper-parameters).
    for source in (obj, obj.get("args"), obj.get("hyper_parameters"), obj.get("hparams")):
        arch = arch or named_arch(source)
    meta = obj.get("meta")
    if arch is None and isinstance(meta, Mapping) and isinstance(meta.get("cfg"), str):
        arch = _openmmlab_arch(meta["cfg"])
    return arch, (small if isinstance(small, bool) else None)
