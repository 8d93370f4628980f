"""Opening an evaluation split: a :func:`mochi.data.load_dataset` source, optionally limited."""

from __future__ import annotations

from mochi.data import LimitedDataset, load_dataset


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
    """Dataset ``data`` at ``split`` with ``transform``; ``limit`` keeps a fixed random subset of N images
    (seed 0, the same subset for every backbone, so evaluations stay comparable and cacheable)."""
    ds = load_dataset(data, split, root=root, subset=subset, transform=transform, on_corrupt=on_corrupt)
    return ds if limit is None else LimitedDataset(ds, limit, seed=0)
