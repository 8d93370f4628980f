"""Split batch norm: one device computes BN statistics per group of the batch, as S devices would.

MoCo's shuffle BN needs each BN statistic to come from a group of images that does not hold both views of one
image. Across GPUs every process normalises its own slice of the (shuffled) batch; on one device the batch is
cut into ``splits`` contiguous groups and each group is normalised with its own mean and variance.

Running the whole encoder once per group gives that, but with groups of 8 or 16 images every convolution
runs on a fraction of the batch: 7% (batch 128, 4 groups) to 49% (batch 64, 8 groups) more time per encoder
step on one CPU thread (``benchmarks/bench_split_bn.py``).
:class:`SplitBatchNorm2d` instead splits only the normalisation: the convolutions see the whole batch, and the
output equals the per-group encoder's output. Its running statistics are updated once per step with the mean
of the groups' statistics (momentum applied once, as one BN layer of a multi-GPU run updates once per step).
Parameter and buffer names are those of ``nn.BatchNorm2d``: checkpoints and exports do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are computed per group of ``splits`` contiguous
    chunks of the batch; identical to ``nn.BatchNorm2d`` in eval mode and for ``splits = 1``."""

    def __init__(self, num_features: int, splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"split BN: a batch of {n} does not divide into {s} groups")
        # (S·n', C, H, W) -> (n', S·C, H, W): group g's channels become channels g·C ... g·C + C - 1, so one
        # batch_norm call normalises each group with its own statistics.
        grouped = x.view(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        # momentum None: a cumulative average, as nn.BatchNorm2d computes it.
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
        y = F.batch_norm(grouped, mean, var, weight, bias, True, momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(0))
            self.running_var.copy_(var.view(s, c).mean(0))
            self.num_batches_tracked.add_(1)
        return y.view(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, splits={self.splits}"


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place) by a :class:`SplitBatchNorm2d` with the same
    parameters and buffers; ``splits = 1`` leaves the module as it is. Returns ``module``."""
    if splits == 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            if not (child.affine and child.track_running_stats):
                raise ValueError(f"split BN needs affine BN layers with running statistics ({name})")
            new = SplitBatchNorm2d(
                child.num_features,
                splits,
                eps=child.eps,
                momentum=child.momentum,
            ).to(device=child.weight.device, dtype=child.weight.dtype)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            split_batchnorm(child, splits)
    return module
