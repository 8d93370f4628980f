"""The one ResNet builder and the architecture facts every stage shares.

Infer the torchvision architecture from tensors, build it, load it strictly.

Every backbone this suite reads or writes is an untouched torchvision ResNet (names ``conv1``,
``bn1``, ``layer1..4``, ``fc``), optionally with the small "CIFAR" stem: a 3×3 stride-1 ``conv1``
and no max-pool, used for 32 px images. The small stem keeps every tensor name; only
``conv1.weight`` changes shape, ``(64, 3, 7, 7)`` → ``(64, 3, 3, 3)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch
import torchvision
from torch import nn

from mochi.constants import ARCHS, ArchSpec
from mochi.errors import MochiError

HEAD_KEYS = ("fc.weight", "fc.bias")
_BLOCK_RE = re.compile(r"^layer([1-4])\.(\d+)\.")
_BN_BUFFER = "num_batches_tracked"


@dataclass(frozen=True)
class ArchInfo:
    """What the tensors say: ``arch`` (a key of :data:`ARCHS`) and ``stem`` ("standard" or "small")."""

    arch: str
    stem: str

    @property
    def small_stem(self) -> bool:
        return self.stem == "small"


def build_torchvision_resnet(
    arch: str, small_stem: bool = False, *, num_classes: int = 1000, stem_padding: int = 1
) -> torchvision.models.ResNet:
    """``torchvision.models.<arch>(num_classes=...)``, random init; the one ResNet builder of every stage.

    ``small_stem``: 3×3 stride-1 conv1 and no max-pool (the usual stem for 32 px images); every tensor keeps
    its name, only ``conv1.weight`` changes shape. ``stem_padding``: that conv's padding (2 for solo-learn's
    CIFAR ResNets, whose weights have the same shapes but compute different features).
    """
    if arch not in ARCHS:
        raise MochiError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if small_stem:
        model.conv1 = nn.Conv2d(
            3, model.conv1.out_channels, kernel_size=3, stride=1, padding=stem_padding, bias=False
        )
        model.maxpool = nn.Identity()
    return model


@lru_cache(maxsize=32)
def _reference(arch: str, small_stem: bool) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Built on the meta device: names and shapes without allocating (or initialising) any weights.
    with torch.device("meta"):
        model = build_torchvision_resnet(arch, small_stem)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def reference_shapes(arch: str, small_stem: bool = False) -> dict[str, tuple[int, ...]]:
    """Name → shape of ``torchvision.models.<arch>()``'s state dict, in its order, ``fc`` included."""
    return dict(_reference(arch, small_stem))


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> ArchInfo:
    """Infer the torchvision ResNet from torchvision-named backbone tensors.

    Depth from the number of blocks per stage and the block type (``conv3`` present → Bottleneck);
    groups from ``layer1.0.conv2.weight`` (in-channels per group); width per group from
    ``layer1.0.conv1``'s out-channels; stem from ``conv1.weight``'s kernel (7 standard, 3 small).
    """
    if "conv1.weight" not in state_dict or "layer1.0.conv1.weight" not in state_dict:
        raise MochiError(
            "cannot infer the architecture: 'conv1.weight' or 'layer1.0.conv1.weight' is missing; "
            "pass --arch to name it"
        )
    stem_width = _shape(state_dict["conv1.weight"])[0]
    if stem_width != 64:
        # VISSL / SimCLR RN50-w2, -w4: every width multiplied, stem included; torchvision's wide_resnet50_2
        # widens only the bottleneck's inner convs and keeps a 64-channel stem.
        raise MochiError(
            f"wrong architecture: conv1 has {stem_width} output channels (torchvision ResNets have 64): a "
            f"width-multiplied ResNet (e.g. VISSL / SimCLR RN50-w{stem_width // 64}), which is not "
            "torchvision's wide_resnet50_2 and is not supported"
        )
    blocks: dict[int, set[int]] = {1: set(), 2: set(), 3: set(), 4: set()}
    for k in state_dict:
        m = _BLOCK_RE.match(k)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    layers = tuple(len(blocks[i]) for i in (1, 2, 3, 4))
    bottleneck = "layer1.0.conv3.weight" in state_dict
    conv2 = state_dict.get("layer1.0.conv2.weight")
    width = _shape(state_dict["layer1.0.conv1.weight"])[0]
    groups = 1
    if bottleneck and conv2 is not None and len(_shape(conv2)) == 4 and _shape(conv2)[1] > 0:
        groups = max(1, _shape(conv2)[0] // _shape(conv2)[1])
    found = ArchSpec(bottleneck, layers, groups, width // groups if bottleneck else 64)
    matches = [name for name, spec in ARCHS.items() if spec == found]
    if bottleneck is False and width != 64:
        matches = []
    if not matches:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise MochiError(
            f"wrong architecture: blocks per stage {list(layers)} "
            f"({kind}, layer1 width {width}, groups {groups}) "
            f"match no torchvision ResNet; supported: {', '.join(ARCHS)}. If tensors are missing from the "
            "checkpoint, pass --arch to name the architecture and see them listed"
        )
    kernel = _shape(state_dict["conv1.weight"])[-1]
    if kernel not in (3, 7):
        raise MochiError(
            f"wrong architecture: conv1 has a {kernel}×{kernel} kernel; torchvision ResNets use 7×7 "
            "(or 3×3 for the small CIFAR stem)"
        )
    return ArchInfo(matches[0], "small" if kernel == 3 else "standard")


@dataclass(frozen=True)
class Comparison:
    """A backbone state dict against the reference ``fc``-less names and shapes of one architecture."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "name: got (..) expected (..)"
    filled: list[str]  # num_batches_tracked buffers absent from old checkpoints, filled with 0


def compare(
    state_dict: Mapping[str, torch.Tensor], info: ArchInfo
) -> tuple[dict[str, torch.Tensor], Comparison]:
    """Order ``state_dict`` as torchvision does and list what is missing, unexpected or mis-shaped.

    ``fc`` is not part of the backbone and must not be in ``state_dict``. Missing
    ``num_batches_tracked`` buffers (checkpoints from before PyTorch 0.4.1 lack them; torchvision
    fills them on load too) are filled with 0 and listed in ``filled``, not in ``missing``.
    """
    ref = {k: s for k, s in reference_shapes(info.arch, info.small_stem).items() if k not in HEAD_KEYS}
    ordered: dict[str, torch.Tensor] = {}
    missing, mismatched, filled = [], [], []
    for name, shape in ref.items():
        if name not in state_dict:
            if name.endswith(_BN_BUFFER):
                ordered[name] = torch.tensor(0, dtype=torch.long)
                filled.append(name)
            else:
                missing.append(name)
            continue
        t = state_dict[name]
        if _shape(t) != shape:
            mismatched.append(f"{name}: got {list(_shape(t))}, expected {list(shape)}")
        ordered[name] = t
    unexpected = [k for k in state_dict if k not in ref]
    return ordered, Comparison(missing, unexpected, mismatched, filled)


def check_loadable(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`MochiError` unless ``state_dict`` fills every tensor of ``model`` except ``fc``."""
    target = model.state_dict()
    conv1 = state_dict.get("conv1.weight")
    if conv1 is not None and "conv1.weight" in target and _shape(conv1) != _shape(target["conv1.weight"]):
        got, want = _shape(conv1)[-1], _shape(target["conv1.weight"])[-1]
        raise MochiError(
            f"stem mismatch: the weights have a {got}×{got} conv1 but the model's conv1 is {want}×{want}; "
            f"build the model with mochi.transfer.build_torchvision_resnet(arch, small_stem={got == 3})"
        )
    missing = [k for k in target if k not in state_dict and k not in HEAD_KEYS]
    unexpected = [k for k in state_dict if k not in target]
    mismatched = [
        f"{k}: got {list(_shape(v))}, expected {list(_shape(target[k]))}"
        for k, v in state_dict.items()
        if k in target and _shape(v) != _shape(target[k])
    ]
    if missing or unexpected or mismatched:
        raise MochiError(
            "the weights do not fit the model: "
            + "; ".join(
                f"{label} {_preview(items)}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched))
                if items
            )
            + "; check the architecture (mochi inspect CKPT shows what the checkpoint holds)"
        )


def _preview(items: list[str], n: int = 5) -> str:
    more = f" … (+{len(items) - n} more)" if len(items) > n else ""
    return f"{len(items)} [{', '.join(items[:n])}{more}]"


def load_strict_except_fc(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``model``: every tensor but ``fc.weight``/``fc.bias`` must be filled."""
    check_loadable(model, state_dict)
    result = model.load_state_dict(state_dict, strict=False)
    assert set(result.missing_keys) <= set(HEAD_KEYS) and not result.unexpected_keys, result
    return model
