"""Tiny deterministic fixtures shared by the test-suite and its multi-process helpers."""

from __future__ import annotations

import time
from pathlib import Path

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


DDP_STEPS = 5


def label_ids(step: int, batch: int = 8) -> torch.Tensor:
    """A distinct label per image of :func:`global_batch` (its global index), to follow it into the queue."""
    return torch.arange(batch) + step * batch


def pid_of_rank(marker: str, rank: int, deadline: float) -> int:
    """The process torchrun started as ``rank`` for the run tagged with ``marker`` (read from /proc)."""
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"MOCHI_FAULT_TEST={marker}".encode() in env and f"RANK={rank}".encode() in env:
                if b"TORCHELASTIC_RUN_ID" in b" ".join(env) and b"LOCAL_RANK=" + str(rank).encode() in env:
                    return int(entry.name)
        time.sleep(0.2)
    raise AssertionError("rank process not found")
