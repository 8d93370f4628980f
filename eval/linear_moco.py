"""The reference linear protocol ``moco`` (``main_lincls.py``): only ``fc`` trains, on augmented images
through the frozen backbone, and every backbone tensor is checked unchanged afterwards.

Defaults: :class:`mochi.eval.linear.MocoLinearConfig`; the protocol: docs/protocols.md.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader

from mochi.errors import MochiError
from mochi.transforms import IMAGENET_MEAN, IMAGENET_STD

from .backbones import EvalBackbone
from .knn import classification_metrics
from .linear import MocoLinearConfig, torch_seeded

# ---------------------------------------------------------------------------------------------------------
# moco (reference)


class BackboneChanged(MochiError):
    """The frozen backbone changed during linear training: the protocol's numbers would be invalid."""


def backbone_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def check_backbone_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """``main_lincls.py``'s sanity check: every backbone tensor (weights and BN buffers) is unchanged."""
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k].to(v.device))]
    if changed:
        raise BackboneChanged(
            f"{len(changed)} backbone tensors changed during linear training "
            f"(e.g. {', '.join(changed[:3])}): "
            "the backbone was not frozen"
        )


def moco_train_transform(image_size: int) -> T.Compose:
    """RandomResizedCrop + flip + ImageNet normalisation (reference linear training augmentation)."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def linear_moco(
    backbone: EvalBackbone,
    train_dataset,
    test_dataset,
    n_classes: int,
    config: MocoLinearConfig | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    workers: int = 0,
    amp: bool = True,
    progress: bool = False,
    _train_hook=None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``fc`` on the frozen backbone (datasets carry the train / eval transforms).

    Returns ``(metrics, details)``. Raises :class:`BackboneChanged` if any backbone tensor moved.
    ``_train_hook(model)`` runs after each epoch (tests use it to simulate a leak).
    """
    cfg = config or MocoLinearConfig()
    with torch_seeded(seed):  # the head's init and (without workers) the augmentations; global RNG restored
        return _linear_moco(
            backbone, train_dataset, test_dataset, n_classes, cfg, seed=seed, device=torch.device(device),
            workers=workers, amp=amp, progress=progress, train_hook=_train_hook,
        )  # fmt: skip


def _linear_moco(
    backbone: EvalBackbone, train_dataset, test_dataset, n_classes: int, cfg: MocoLinearConfig, *,
    seed: int, device: torch.device, workers: int, amp: bool, progress: bool, train_hook,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    from tqdm import tqdm

    model = copy.deepcopy(backbone.model)
    model.fc = nn.Linear(backbone.feature_dim, n_classes)
    nn.init.normal_(model.fc.weight, 0.0, cfg.fc_init_std)
    nn.init.zeros_(model.fc.bias)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("fc.")
    model.to(device).eval()  # eval(): BN statistics stay frozen, as in the reference
    before = backbone_snapshot(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    use_amp = amp and device.type == "cuda"
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train_dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers, generator=g,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    for epoch in tqdm(range(cfg.epochs), desc="linear (moco)", disable=not progress, leave=False):
        lr = cfg.lr * 0.1 ** sum(epoch >= s for s in cfg.lr_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = F.cross_entropy(model(images).float(), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if train_hook is not None:
            train_hook(model)
    check_backbone_unchanged(model, before)
    scores, targets = [], []
    with torch.inference_mode():
        for images, t in DataLoader(test_dataset, batch_size=cfg.batch_size, num_workers=workers):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                scores.append(model(images.to(device)).float().cpu())
            targets.append(t)
    metrics = classification_metrics(torch.cat(scores), torch.cat(targets), n_classes)
    return metrics, {"backbone_unchanged": True}
