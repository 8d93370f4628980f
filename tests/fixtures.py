"""Tiny deterministic fixtures shared by the test-suite and its multi-process helpers."""

from __future__ import annotations

import torch


def tiny_moco_kwargs(**overrides) -> dict:
    """A small MoCo configuration that runs in milliseconds on a CPU."""
    kw = dict(arch="resnet18", dim=16, queue_size=32, momentum=0.9, temperature=0.2, bn_splits=1)
    kw.update(overrides)
    return kw


def global_batch(step: int, batch: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible global batch of query / key images for a given step."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g)
