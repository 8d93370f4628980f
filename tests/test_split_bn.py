"""Split BN in the BN layers: per-group statistics, running statistics, unchanged names and eval mode.

Protocol: docs/protocols.md#shuffle-bn-and-split-bn.
"""

import copy

import pytest
import torch
import torchvision
from torch import nn

from mochi.pretrain.split_bn import SplitBatchNorm2d, split_batchnorm


def batch(n=12, c=5, size=4, seed=0):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def trained_bn(c=5, seed=1):
    bn = nn.BatchNorm2d(c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


def test_each_group_is_normalised_with_its_own_statistics_and_gradients_match():
    x = batch().requires_grad_()
    plain = trained_bn().train()
    split = split_batchnorm(nn.Sequential(copy.deepcopy(plain)), 3)[0].train()
    assert isinstance(split, SplitBatchNorm2d)
    y = split(x)
    # the direct formula: group g = rows 4g..4g+3, biased variance over (N, H, W) of the group
    for g in range(3):
        xg = x[4 * g : 4 * g + 4]
        mean = xg.mean(dim=(0, 2, 3), keepdim=True)
        var = xg.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        direct = (xg - mean) / torch.sqrt(var + plain.eps) * plain.weight.view(1, -1, 1, 1) + plain.bias.view(
            1, -1, 1, 1
        )
        torch.testing.assert_close(y[4 * g : 4 * g + 4], direct, rtol=1e-5, atol=1e-5)
    # gradients equal those of ordinary BN called once per group
    w = torch.randn_like(y)
    (y * w).sum().backward()
    gx, gw = x.grad.clone(), split.weight.grad.clone()
    x.grad = None
    ref = torch.cat([plain(c) for c in x.chunk(3)])
    (ref * w).sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, plain.weight.grad, rtol=1e-4, atol=1e-5)


def test_running_statistics_move_once_towards_the_mean_of_the_groups():
    x = batch()
    bn = trained_bn()
    r_mean, r_var = bn.running_mean.clone(), bn.running_var.clone()
    split = split_batchnorm(nn.Sequential(bn), 3)[0].train()
    split(x)
    groups = x.chunk(3)
    mu = torch.stack([g.mean(dim=(0, 2, 3)) for g in groups]).mean(0)
    var = torch.stack([g.transpose(0, 1).reshape(5, -1).var(dim=1, unbiased=True) for g in groups]).mean(0)
    torch.testing.assert_close(split.running_mean, 0.9 * r_mean + 0.1 * mu)
    torch.testing.assert_close(split.running_var, 0.9 * r_var + 0.1 * var)
    assert int(split.num_batches_tracked) == 1


def test_eval_mode_one_group_names_and_bad_batches():
    net = torchvision.models.resnet18()
    names = list(net.state_dict())
    plain = copy.deepcopy(net).eval()
    split = split_batchnorm(net, 4).eval()
    assert list(split.state_dict()) == names  # checkpoints and exports keep their keys
    assert sum(isinstance(m, SplitBatchNorm2d) for m in split.modules()) == 20
    x = torch.randn(6, 3, 32, 32)
    torch.testing.assert_close(split(x), plain(x), rtol=0, atol=0)  # eval: running statistics, no groups
    one = split_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), 1)
    assert type(one[0]) is nn.BatchNorm2d  # one group: left as it is
    with pytest.raises(ValueError, match="a batch of 6 does not divide into 4 groups"):
        split.train()(x)
