"""Recognise a checkpoint's layout and pull out the ResNet backbone under torchvision names.

A loaded checkpoint is a tree of dicts whose leaves are tensors (or numpy arrays). Every framework
puts the ResNet somewhere in that tree under some prefix and one of three naming schemes:

==============  ==========================================================================
scheme          anchor key (``<prefix>`` + ...)
==============  ==========================================================================
torchvision     ``layer1.0.conv1.weight`` — torchvision, timm, MoCo, solo-learn, MMSelfSup, VISSL, DINO
lightly         ``4.0.conv1.weight`` — ``nn.Sequential(*list(resnet.children())[:-1])``: 0 conv1,
                1 bn1, 4..7 layer1..4
detectron2      ``res2.0.conv1.weight`` — Detectron2 ``.pkl`` and ``.pth`` (``backbone.bottom_up.``;
                C4 models keep res5 under ``roi_heads.res5.``)
==============  ==========================================================================

Each anchor found is a *candidate* (container path in the tree, prefix, scheme, role). Candidates
are told apart by role: ``query`` (online network), ``key`` (momentum / EMA / target network),
``teacher`` / ``student`` (DINO). ``encoder`` picks the role, ``prefix`` overrides detection.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mochi import layout
from mochi.constants import ENCODERS
from mochi.errors import MochiError

from .declared import declared
from .detectron2.names import CAFFE2_HINT, d2_to_tv_name

_ANCHORS = {
    "torchvision": "layer1.0.conv1.weight",
    "lightly": "4.0.conv1.weight",
    "detectron2": "res2.0.conv1.weight",
}
_LIGHTLY_INDEX = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# Path components that name a head (projector, classifier, DINO head, VISSL heads, MMSelfSup neck).
_LIGHTLY_ROLES = ("key_backbone.", "teacher_backbone.", "student_backbone.")
_HEAD_NAMES = {
    "fc",
    "head",
    "heads",
    "neck",
    "projector",
    "predictor",
    "classifier",
    "projection_head",
    "prediction_head",
}

Container = tuple[str, ...]


def _is_array(v: Any) -> bool:
    return isinstance(v, torch.Tensor | np.ndarray)


def flatten(obj: Any, max_depth: int = 8) -> dict[Container, dict[str, Any]]:
    """Every dict in ``obj`` that holds arrays: container path → {key: array}. Lists are not entered."""
    out: dict[Container, dict[str, Any]] = {}

    def walk(node: Mapping, path: Container) -> None:
        for k, v in node.items():
            if _is_array(v):
                out.setdefault(path, {})[str(k)] = v
            elif isinstance(v, Mapping) and len(path) < max_depth:
                walk(v, (*path, str(k)))

    if isinstance(obj, Mapping):
        walk(obj, ())
    return out


# Lightly's benchmarks name the networks key_backbone / teacher_backbone / student_backbone (and their heads
# key_projection_head, teacher_head ...); VISSL keeps MoCo's momentum encoder as the loss's moco_encoder.
_ROLE_PREFIXES = {"key_": "key", "teacher_": "teacher", "student_": "student", "momentum_": "key"}


def _role(components: list[str]) -> str:
    for c in components:
        c = c.lower()
        if c in ("teacher", "student"):
            return c
        for start, role in _ROLE_PREFIXES.items():
            if c.startswith(start):
                return role
        if c in ("encoder_k", "ema", "key_encoder", "moco_encoder") or "momentum" in c or "target" in c:
            return "key"
        if c.endswith("_ema") or c.startswith("ema_"):
            return "key"
    return "query"


def _is_head(component: str) -> bool:
    """A head's path component, also with its network's name on it (key_projection_head, head_momentum)."""
    c = component.lower()
    for start in (*_ROLE_PREFIXES, "ema_"):
        c = c.removeprefix(start)
    for end in ("_momentum", "_ema", "_k"):
        c = c.removesuffix(end)
    return c in _HEAD_NAMES


@dataclass(frozen=True)
class Candidate:
    container: Container
    prefix: str
    scheme: str

    @property
    def role(self) -> str:
        return _role([*self.container, *self.prefix.split(".")])

    @property
    def where(self) -> str:
        return ".".join(self.container) + ("/" if self.container else "") + self.prefix


def find_candidates(flat: Mapping[Container, Mapping[str, Any]]) -> list[Candidate]:
    cands = []
    for container, tensors in flat.items():
        for key in tensors:
            for scheme, anchor in _ANCHORS.items():
                if key.endswith(anchor):
                    prefix = key[: -len(anchor)]
                    if prefix and not prefix.endswith("."):
                        continue
                    if scheme == "lightly" and prefix + "0.weight" not in tensors:
                        continue
                    cands.append(Candidate(container, prefix, scheme))
    return cands


def _guess_scheme(keys: list[str]) -> str:
    if any(k.startswith(("stem.", "res2.")) for k in keys):
        return "detectron2"
    if any(k.startswith("4.") for k in keys) and "0.weight" in keys:
        return "lightly"
    return "torchvision"


@dataclass
class Extraction:
    """The backbone found in a checkpoint, under torchvision names; fc/heads and other tensors set apart."""

    format: str
    container: str
    prefix: str
    encoder: str | None
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    declared_arch: str | None = None
    declared_small_stem: bool | None = None


def _to_tensor(v: Any) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))


def _rename(name: str, scheme: str) -> str:
    if scheme == "lightly":
        first, _, rest = name.partition(".")
        return f"{_LIGHTLY_INDEX[first]}.{rest}" if first in _LIGHTLY_INDEX and rest else name
    if scheme == "detectron2":
        return d2_to_tv_name(name) or name
    return name


def _no_backbone_error(flat: Mapping[Container, Mapping[str, Any]], obj: Any, what: str) -> MochiError:
    keys = [k for t in flat.values() for k in t]
    if any(CAFFE2_HINT.match(k) for k in keys):
        return MochiError(
            f"{what} is a Caffe2-format Detectron weight file (names like 'res2_0_branch2a_w'); Caffe2 "
            "weights are not supported: use a torchvision or Detectron2-format checkpoint"
        )
    if any(
        k.startswith(("blocks.", "patch_embed.")) or ".blocks." in k or ".patch_embed." in k for k in keys
    ):
        return MochiError(
            f"{what} holds a Vision Transformer, not a ResNet; only ResNet backbones are supported"
        )
    if not keys:
        top = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        return MochiError(f"{what} holds no tensors (top level: {top}); is it a model checkpoint?")
    sample = ", ".join(keys[:5])
    return MochiError(
        f"no recognisable ResNet prefix in {what}: no tensor name ends with 'layer1.0.conv1.weight' "
        f"(torchvision), 'res2.0.conv1.weight' (Detectron2) or '4.0.conv1.weight' (Lightly); first names: "
        f"{sample}. Pass --prefix to name where the backbone is"
    )


def _choose(
    flat: Mapping[Container, Mapping[str, Any]], cands: list[Candidate], encoder: str | None, what: str
) -> Candidate:
    roles = [r for r in ENCODERS if any(c.role == r for c in cands)]
    if encoder is not None:
        if encoder not in ENCODERS:
            raise MochiError(f"--encoder {encoder!r}: choose one of {', '.join(ENCODERS)}")
        chosen = [c for c in cands if c.role == encoder]
        if not chosen:
            raise MochiError(
                f"--encoder {encoder}: {what} has no {encoder} encoder (it has: {', '.join(roles)}); "
                f"pass --encoder {roles[0]} or leave --encoder out"
            )
    else:
        for default in ("teacher", "query", "student", "key"):
            chosen = [c for c in cands if c.role == default]
            if chosen:
                break
    if len(chosen) > 1 and not _same_tensors(flat, chosen):
        # --prefix takes a prefix, or container/prefix where containers differ and prefixes do not.
        prefixes = [c.prefix for c in chosen]
        names = [c.where if prefixes.count(c.prefix) > 1 else c.prefix for c in chosen]
        raise MochiError(
            f"{what} holds several ResNet backbones ({', '.join(c.where for c in chosen)}); "
            f"pick one with --prefix ({' or '.join(repr(n) for n in names)})"
        )
    return chosen[0]


def _same_tensors(flat: Mapping[Container, Mapping[str, Any]], cands: list[Candidate]) -> bool:
    """Whether the candidates are one network saved under several names (a module shared by two parents,
    as MMSelfSup's backbone and encoder_q.0): then any of them is the backbone."""
    first = cands[0]
    ref = {k[len(first.prefix) :]: v for k, v in flat[first.container].items() if k.startswith(first.prefix)}
    for c in cands[1:]:
        got = {k[len(c.prefix) :]: v for k, v in flat[c.container].items() if k.startswith(c.prefix)}
        if got.keys() != ref.keys() or not all(
            torch.equal(_to_tensor(got[k]), _to_tensor(ref[k])) for k in ref
        ):
            return False
    return True


def _with_user_prefix(
    flat: Mapping[Container, Mapping[str, Any]], cands: list[Candidate], prefix: str, what: str
) -> list[Candidate]:
    exact = [c for c in cands if c.prefix == prefix or c.where == prefix]
    if exact:
        return exact
    found = []
    for container, tensors in flat.items():
        stripped = [k[len(prefix) :] for k in tensors if k.startswith(prefix)]
        if stripped:
            found.append(Candidate(container, prefix, _guess_scheme(stripped)))
    if not found:
        near = ", ".join(sorted({c.prefix or "''" for c in cands})) or "none"
        raise MochiError(
            f"--prefix {prefix!r}: no tensor in {what} starts with it (ResNet prefixes found: {near}); "
            "fix the prefix or leave it out to detect it"
        )
    return found


def _format_label(obj: Any, cand: Candidate, kind: str, components: set[str]) -> str:
    top = set(obj) if isinstance(obj, Mapping) else set()
    if cand.scheme == "detectron2":
        return "detectron2" if kind == "pickle" else "detectron2-checkpoint"
    if cand.container[:1] == ("classy_state_dict",):
        return "vissl"
    if cand.container[:1] in (("teacher",), ("student",)):
        return "dino"
    if layout.mochi_format_version(obj) is not None:
        return "mochi"
    # OpenMMLab's meta before MoCo's names: MMSelfSup's MoCo also has encoder_q / encoder_k.
    if "meta" in top or "neck" in components:
        return "mmselfsup"
    if "encoder_q" in cand.prefix or "encoder_k" in cand.prefix:
        return "moco"
    lightly_parts = {"projection_head", "prediction_head", "backbone_momentum", "key_backbone"}
    if cand.scheme == "lightly" or components & lightly_parts or cand.prefix.startswith(_LIGHTLY_ROLES):
        return "lightly"
    if components & {"projector", "momentum_backbone", "classifier", "momentum_projector", "predictor"}:
        return "solo-learn"
    if kind == "safetensors" and cand.prefix == "":
        return "safetensors"
    if cand.container[:1] in (("model",), ("model_ema",)) and "lr_scheduler" in top:
        return "torchvision-references"  # references/classification/train.py
    if cand.prefix in ("", "module."):
        return "torchvision" if cand.container == () else "timm"
    return "generic"


def extract(
    obj: Any,
    kind: str = "torch",
    *,
    encoder: str | None = None,
    prefix: str | None = None,
    what: str = "checkpoint",
) -> Extraction:
    """Find the backbone in a loaded checkpoint ``obj`` and return it under torchvision names.

    ``kind`` is ``"torch"`` or ``"pickle"`` (from :func:`~mochi.transfer.loading.read_checkpoint`);
    ``what`` names the file in error messages. Raises :class:`MochiError` when no ResNet is found or
    the choice is ambiguous.
    """
    flat = flatten(obj)
    cands = find_candidates(flat)
    all_roles = {c.role for c in cands}
    if prefix is not None:
        cands = _with_user_prefix(flat, cands, prefix, what)
    if not cands:
        raise _no_backbone_error(flat, obj, what)
    cand = _choose(flat, cands, encoder, what)
    tensors = flat[cand.container]

    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    taken: set[tuple[Container, str]] = set()
    sources = [cand.prefix]
    if cand.scheme == "detectron2" and not any(k.startswith(cand.prefix + "res5.") for k in tensors):
        sources.append("roi_heads.")  # C4 models: res5 lives in the ROI head
    for src in sources:
        for k, v in tensors.items():
            if not k.startswith(src):
                continue
            name = k[len(src) :]
            if src != cand.prefix and not name.startswith("res5."):
                continue
            name = _rename(name, cand.scheme)
            taken.add((cand.container, k))
            (head if name.split(".")[0] == "fc" else backbone)[name] = _to_tensor(v)

    role = cand.role
    ignored: Counter[str] = Counter()
    components: set[str] = set()
    for container, ts in flat.items():
        common = 0
        while (
            common < min(len(container), len(cand.container)) and container[common] == cand.container[common]
        ):
            common += 1
        for k, v in ts.items():
            if (container, k) in taken:
                continue
            parts = [*container, *k.split(".")]
            rel = parts[common:]
            depth = 2 if rel[0] == "module" and len(rel) > 1 else 1
            components.update(rel[:depth])
            if _role(parts) == role and any(_is_head(p) for p in parts[:-1]):
                head[".".join(rel)] = _to_tensor(v)
            elif container == cand.container:
                ignored[".".join(parts[:common] + rel[:depth])] += 1
            else:
                # A top-level tensor beside a nested state dict (``best_acc1`` of MoCo's main_lincls.py).
                ignored[container[0] if container else parts[0]] += 1

    encoder_label = role if (len(all_roles) > 1 or role != "query" or "encoder_q" in cand.prefix) else None
    arch, small = declared(obj)
    return Extraction(
        format=_format_label(obj, cand, kind, components),
        container=".".join(cand.container),
        prefix=cand.prefix,
        encoder=encoder_label,
        backbone=backbone,
        head=head,
        ignored=dict(ignored),
        declared_arch=arch,
        declared_small_stem=small,
    )


_DEEP_STEM = re.compile(r"^(conv1\.\d+\.|stem\.\d+\.)")


def check_plain_stem(backbone: Mapping[str, torch.Tensor]) -> None:
    """Raise for deep-stem ResNets (ResNet-D, MMPreTrain ResNetV1d, timm ``*d``): not torchvision ResNets."""
    if "conv1.weight" not in backbone and any(_DEEP_STEM.match(k) for k in backbone):
        raise MochiError(
            "wrong architecture: this backbone has a deep stem (ResNet-D / ResNetV1d: three 3×3 convs "
            "instead of conv1), which torchvision ResNets and Detectron2's R50 do not have; not supported"
        )
