"""Opening an evaluation split: a :func:`mochi.pretrain.data.load_dataset` source, optionally limited."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mochi.errors import MochiError
from mochi.pretrain.data import load_dataset


class LimitedDataset(Dataset):
    """The first ``limit`` items of ``base`` (a quick evaluation); its identity records the limit."""

    def __init__(self, base, limit: int) -> None:
        self.base = base
        self.limit = min(limit, len(base))
        self.classes = base.classes
        self.targets = np.asarray(base.targets)[: self.limit]

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, index: int):
        if not 0 <= index < self.limit:
            raise IndexError(index)
        return self.base[index]

    def identity(self) -> dict[str, Any]:
        return {**self.base.identity(), "limit": self.limit, "num_images": self.limit}


def open_split(
    data: str,
    split: str,
    *,
    root: str | None = None,
    subset: str | None = None,
    transform=None,
    limit: int | None = None,
    on_corrupt: str = "error",
):
    """Dataset ``data`` at ``split`` with ``transform``; ``limit`` keeps only its first N images."""
    ds = load_dataset(data, split, root=root, subset=subset, transform=transform, on_corrupt=on_corrupt)
    if limit is not None:
        if limit < 1:
            raise MochiError(f"an image limit must be >= 1, got {limit}")
        ds = LimitedDataset(ds, limit)
    return ds
