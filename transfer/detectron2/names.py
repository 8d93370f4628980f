"""Detectron2 weight files: torchvision ↔ Detectron2 ResNet names, and the ``.pkl`` writer.

Plain torch and numpy: nothing here needs Detectron2 installed.

Name mapping (docs/protocols.md#converting-weights-to-detectron2): keys not under ``layerN`` get
``stem.``; ``layer1..4`` → ``res2..res5``;
``bnK`` → ``convK.norm``; ``downsample.0`` → ``shortcut``; ``downsample.1`` → ``shortcut.norm``. It works
component by component, so the reverse mapping is exact. ``num_batches_tracked`` is kept.

File layout read by Detectron2's ``DetectionCheckpointer``: a pickle (extension ``.pkl``) of
``{"model": {name: numpy array}, "__author__": str, "matching_heuristics": True}``. With
``matching_heuristics`` each model key takes the longest checkpoint key that is a dotted suffix of
it, so ``res5.*`` also fills ``roi_heads.res5.*`` in C4 models. Without ``__author__`` Detectron2
treats the file as a Caffe2 (BGR) model.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mochi.errors import MochiError
from mochi.io import atomic_open

_LAYER = re.compile(r"^layer([1-4])$")
_RES = re.compile(r"^res([2-5])$")
_BN = re.compile(r"^bn([1-3])$")
_CONV = re.compile(r"^conv([1-3])$")


def tv_to_d2_name(name: str) -> str:
    """``layer1.0.bn1.weight`` → ``res2.0.conv1.norm.weight``; ``bn1.weight`` → ``stem.conv1.norm.weight``."""
    parts = name.split(".")
    m = _LAYER.match(parts[0])
    head = [f"res{int(m.group(1)) + 1}"] if m else ["stem", parts[0]]
    out: list[str] = []
    rest = parts[1:]
    i = 0
    while i < len(rest):
        p = rest[i]
        b = _BN.match(p)
        if b:
            out += [f"conv{b.group(1)}", "norm"]
        elif p == "downsample" and i + 1 < len(rest) and rest[i + 1] in ("0", "1"):
            out += ["shortcut"] if rest[i + 1] == "0" else ["shortcut", "norm"]
            i += 1
        else:
            out.append(p)
        i += 1
    if not m:
        b = _BN.match(parts[0])
        head = ["stem", f"conv{b.group(1)}", "norm"] if b else head
    return ".".join(head + out)


def d2_to_tv_name(name: str) -> str | None:
    """Inverse of :func:`tv_to_d2_name`; ``None`` when ``name`` is not a Detectron2 ResNet name."""
    parts = name.split(".")
    if parts[0] == "stem" and len(parts) > 1:
        first, rest = [], parts[1:]
    elif _RES.match(parts[0]):
        first, rest = [f"layer{int(parts[0][3:]) - 1}"], parts[1:]
    else:
        return None
    out: list[str] = []
    i = 0
    while i < len(rest):
        p = rest[i]
        nxt = rest[i + 1] if i + 1 < len(rest) else None
        c = _CONV.match(p)
        if c and nxt == "norm":
            out.append(f"bn{c.group(1)}")
            i += 2
        elif p == "shortcut":
            out += ["downsample", "1"] if nxt == "norm" else ["downsample", "0"]
            i += 2 if nxt == "norm" else 1
        else:
            out.append(p)
            i += 1
    return ".".join(first + out)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
        t = t.float()
    return t.numpy().copy()


def to_detectron2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """torchvision-named tensors → Detectron2-named numpy arrays (the ``"model"`` entry of a ``.pkl``)."""
    return {tv_to_d2_name(k): _to_numpy(v) for k, v in state_dict.items()}


def from_detectron2(d: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Detectron2 names → torchvision-named tensors. ``d`` is a ``.pkl``'s content or its ``"model"`` dict.

    Names that are not Detectron2 ResNet names raise :class:`MochiError`; use
    :func:`mochi.transfer.load_backbone` to read whole Detectron2 files (it sorts heads from backbone).
    """
    model = d["model"] if "model" in d and isinstance(d["model"], Mapping) else d
    out: dict[str, torch.Tensor] = {}
    for k, v in model.items():
        tv = d2_to_tv_name(k)
        if tv is None:
            raise MochiError(f"{k!r} is not a Detectron2 ResNet name (expected stem.* or res2..res5.*)")
        out[tv] = torch.as_tensor(np.asarray(v))
    return out


def detectron2_payload(state_dict: Mapping[str, torch.Tensor], author: str) -> dict[str, Any]:
    """The object pickled into a Detectron2 ``.pkl``."""
    return {"model": to_detectron2(state_dict), "__author__": author, "matching_heuristics": True}


def write_detectron2_pkl(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, author: str
) -> None:
    """Write ``state_dict`` (torchvision names) as a Detectron2 ``.pkl``, atomically."""
    if not str(path).endswith(".pkl"):
        raise MochiError(
            f"{path}: Detectron2 reads weights as a pickle only from files ending in .pkl "
            "(any other name goes through torch.load); name the output *.pkl"
        )
    payload = detectron2_payload(state_dict, author)
    with atomic_open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=4)


#: Key names of Caffe2-era (Detectron v1) ResNet weights, which are not supported: recognised to say so.
CAFFE2_HINT = re.compile(r"^(conv1_w|res_conv1_bn_[sb]|res\d+_\d+_branch\w+|fc1000_[wb])$")
