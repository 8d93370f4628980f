"""Pretraining: images -> MoCo-v2 / MoCHi backbone checkpoint.

- :mod:`mochi.pretrain.losses` -- pure functions: MoCo logits, hard-negative mixing, loss
- :mod:`mochi.pretrain.moco` -- the query/key encoders, queue, momentum update, shuffle-BN / split-BN
- :mod:`mochi.pretrain.config` -- every option with its default and source; validation by field
- :mod:`mochi.pretrain.train` -- the training loop (DDP, AMP, logging, resume)
- :mod:`mochi.pretrain.checkpoint` -- checkpoint files in the :mod:`mochi.layout` layout, written atomically

Datasets, transforms, the ResNet builder and the distributed helpers live in the shared core
(:mod:`mochi.data`, :mod:`mochi.transforms`, :mod:`mochi.resnet`, :mod:`mochi.distributed`).
"""
