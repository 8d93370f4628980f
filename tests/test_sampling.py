"""Per-image seeding of the pretraining data: the views depend only on (seed, epoch, index)."""

import random

import torch

from mochi.data import load_dataset
from mochi.pretrain.sampling import _PYTHON, _SAMPLE, SeededSamples, derive_seed
from mochi.transforms import TwoCrops, build_augmentation


def test_seeded_views_follow_the_derived_seeds_and_leave_the_callers_rngs_alone():
    ds = load_dataset(
        "fashion-mnist-embedded", "train", transform=TwoCrops(build_augmentation("aug-plus-small", 32))
    )
    seeded = SeededSamples(ds, seed=3)
    seeded.epoch = 2
    torch.manual_seed(123)
    random.seed(456)
    (q, k), label = seeded[7]
    # the caller's streams continue as if nothing had drawn from them
    assert torch.rand(1).item() == _next_torch(123)
    assert random.random() == random.Random(456).random()
    # the views are those of the global RNGs seeded directly from (seed, epoch, index)
    torch.manual_seed(derive_seed(3, 2, 7, _SAMPLE))
    random.seed(derive_seed(3, 2, 7, _PYTHON))
    (q2, k2), label2 = ds[7]
    assert torch.equal(q, q2) and torch.equal(k, k2) and label == label2
    assert not torch.equal(q, k)  # two different random views, so a seeding mix-up would show


def _next_torch(seed: int) -> float:
    return torch.rand(1, generator=torch.Generator().manual_seed(seed)).item()
