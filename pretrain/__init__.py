"""Pretraining: images -> MoCo-v2 / MoCHi backbone checkpoint.

- :mod:`mochi.pretrain.losses` -- pure functions: MoCo logits, hard-negative mixing, loss
- :mod:`mochi.pretrain.moco` -- the query/key encoders, queue, momentum update, shuffle-BN / split-BN
- :mod:`mochi.pretrain.augment` -- aug+ and its small-image variant
- :mod:`mochi.pretrain.data` -- dataset sources (Fashion-MNIST, image folders, CIFAR, STL-10)
- :mod:`mochi.pretrain.train` -- the training loop (DDP, AMP, logging, resume)
- :mod:`mochi.pretrain.checkpoint` -- checkpoint files in the reference layout, written atomically
"""
