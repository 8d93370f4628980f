"""The MoCo module: momentum update, shuffle/split BN, queue updates.

Protocol: docs/protocols.md#moco-v2-pretraining, docs/protocols.md#shuffle-bn-and-split-bn.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mochi.pretrain.losses import contrastive_loss, moco_logits
from mochi.pretrain.moco import MochiParams, MoCo, build_encoder
from mochi.pretrain.split_bn import SplitBatchNorm2d


def tiny(**kw):
    torch.manual_seed(0)
    defaults = dict(arch="resnet18", dim=16, queue_size=32, momentum=0.9, temperature=0.2, bn_splits=2)
    defaults.update(kw)
    return MoCo(**defaults)


def images(b=8, size=32, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_encoder_is_a_plain_torchvision_resnet_plus_head():
    enc = build_encoder("resnet18", dim=128, mlp=True)
    state = {k: v for k, v in enc.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    assert [k for k in enc.state_dict() if k.startswith("fc.")] == [
        "fc.0.weight",
        "fc.0.bias",
        "fc.2.weight",
        "fc.2.bias",
    ]
    small = build_encoder("resnet18", small_stem=True)
    assert small.conv1.weight.shape == (64, 3, 3, 3) and isinstance(small.maxpool, torch.nn.Identity)


def test_momentum_update_formula():
    model = tiny()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    q_params = [p.clone() for p in model.encoder_q.parameters()]
    model.momentum_update()
    for pk, pk0, pq in zip(model.encoder_k.parameters(), before_k, q_params, strict=True):
        torch.testing.assert_close(pk, 0.9 * pk0 + 0.1 * pq)
        assert not pk.requires_grad


def test_shuffle_permutation_is_inverted_exactly():
    # In eval mode BN has no batch dependence, so shuffled-and-unshuffled keys must equal a plain pass.
    model = tiny(bn_splits=4).eval()
    x = images(8)
    k_local, k_all = model.compute_keys(x, torch.Generator().manual_seed(5))
    direct = F.normalize(model.encoder_k(x), dim=1)
    torch.testing.assert_close(k_local, direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(k_all, direct, rtol=0, atol=1e-6)


def test_split_bn_gives_each_chunk_its_own_statistics():
    model = tiny(bn_splits=2).train()
    plain = copy.deepcopy(model.encoder_k)  # the same weights with ordinary BN: one call per chunk
    for m in plain.modules():
        if isinstance(m, SplitBatchNorm2d):
            m.splits = 1
    x = images(8)
    gen = torch.Generator().manual_seed(7)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(7))
    _, k_all = model.compute_keys(x, gen)
    chunks = [plain(x[perm[:4]]), plain(x[perm[4:]])]
    expected = torch.empty(8, 16)
    expected[perm] = F.normalize(torch.cat(chunks), dim=1)
    torch.testing.assert_close(k_all, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mochi", [None, MochiParams(4, 6, 3)])
def test_after_a_step_the_queue_holds_exactly_the_new_keys(mochi):
    model = tiny(mochi=mochi).eval()  # eval: keys independent of batch composition
    queue0 = model.queue.clone()
    ref = copy.deepcopy(model)
    ref.momentum_update()
    x_q, x_k = images(8, seed=1), images(8, seed=2)
    out = model(x_q, x_k, mix=mochi is not None)
    expected_keys = F.normalize(ref.encoder_k(x_k), dim=1)
    torch.testing.assert_close(model.queue[:, :8].T, expected_keys, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.queue[:, 8:], queue0[:, 8:], rtol=0, atol=0)  # nothing else enqueued
    assert int(model.queue_ptr) == 8
    model(x_q, x_k, mix=mochi is not None)
    model(x_q, x_k, mix=mochi is not None)
    model(x_q, x_k, mix=mochi is not None)
    assert int(model.queue_ptr) == 0  # wrapped around K = 32
    if mochi is not None:
        assert {"hard_sim", "synthetic_sim"} <= set(out)


def test_loss_backward_reaches_only_the_query_encoder():
    model = tiny(mochi=MochiParams(4, 6, 3)).train()
    out = model(images(8, seed=3), images(8, seed=4), mix=True)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.queue.grad is None


def test_mochi_n_larger_than_queue_is_an_error():
    with pytest.raises(ValueError, match="exceeds the queue size"):
        tiny(mochi=MochiParams(64, 1, 1))


def test_logits_stay_fp32_under_mixed_precision():
    model = tiny(mochi=MochiParams(4, 6, 3)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(8, seed=5), images(8, seed=6), mix=True)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert model.queue.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last_step():
    model = tiny(mochi=MochiParams(4, 6, 3)).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1)
    x = images(8).cuda().to(memory_format=torch.channels_last)
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, x, True, gen)
    out["loss"].backward()
    opt.step()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_symmetric_step_sums_both_directions_against_the_old_queue_and_enqueues_both_views():
    model = tiny(symmetric=True, queue_size=48).eval()  # eval: keys independent of batch composition
    queue0 = model.queue.clone()
    ref = copy.deepcopy(model)
    ref.momentum_update()
    x1, x2 = images(8, seed=1), images(8, seed=2)
    out = model(x1, x2)
    q1, q2 = (F.normalize(ref.encoder_q(x), dim=1) for x in (x1, x2))
    with torch.no_grad():
        k1, k2 = (F.normalize(ref.encoder_k(x), dim=1) for x in (x1, x2))
    old = queue0.T
    loss_12 = contrastive_loss(moco_logits(q1, k2, old, 0.2))
    loss_21 = contrastive_loss(moco_logits(q2, k1, old, 0.2))
    torch.testing.assert_close(out["loss"], loss_12 + loss_21, rtol=1e-5, atol=1e-5)
    pos = torch.cat([(q1 * k2).sum(1), (q2 * k1).sum(1)]).mean().detach()
    torch.testing.assert_close(out["pos_sim"], pos)
    # both views' keys are negatives from now on: x1's first, then x2's; nothing else moved
    torch.testing.assert_close(model.queue[:, :16].T, torch.cat([k1, k2]), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.queue[:, 16:], queue0[:, 16:], rtol=0, atol=0)
    assert int(model.queue_ptr) == 16
    # the asymmetric step on the same model is the first direction alone
    asym = copy.deepcopy(ref)
    asym.symmetric = False
    asym.momentum_update = lambda: None  # already applied to ref's copy
    out1 = asym(x1, x2)
    torch.testing.assert_close(out1["loss"], loss_12, rtol=1e-5, atol=1e-5)
    assert int(asym.queue_ptr) == 8


def test_symmetric_mochi_step_mixes_for_both_directions_and_trains_only_the_query_encoder():
    model = tiny(mochi=MochiParams(4, 6, 3), symmetric=True, analysis_n=4).train()
    labels = torch.arange(8) % 3
    out = model(images(8, seed=3), images(8, seed=4), mix=True, labels=labels)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert {"hard_sim", "synthetic_sim", "fn_hard_same", "pos_rank"} <= set(out)
    assert torch.isfinite(out["loss"]) and int(model.queue_ptr) == 16
    assert model.queue_labels[:16].tolist() == labels.tolist() * 2
    # the statistics count the queries of both directions: 2B rows, each with N = 4 hard negatives
    assert 0 <= float(out["fn_hard_same"]) <= float(out["fn_hard_known"]) <= 4
