"""The contrastive math against direct formulas.

Protocol: docs/protocols.md#objective, docs/protocols.md#mochi-hard-negative-mixing.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from mochi.pretrain.losses import (
    contrastive_loss,
    mix_hard_negatives,
    mochi_logits,
    moco_logits,
    proxy_top1,
)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_moco_logits_and_loss_equal_direct_formula():
    b, d, k, t = 5, 8, 13, 0.2
    q, key, queue = unit(b, d, seed=1), unit(b, d, seed=2), unit(k, d, seed=3)
    logits = moco_logits(q, key, queue, t)
    assert logits.shape == (b, 1 + k)
    expected_losses = []
    for i in range(b):
        pos = math.exp(float(q[i] @ key[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(k))
        assert logits[i, 0].item() == pytest.approx(float(q[i] @ key[i]) / t, abs=1e-12)
        for j in range(k):
            assert logits[i, 1 + j].item() == pytest.approx(float(q[i] @ queue[j]) / t, abs=1e-12)
        expected_losses.append(-math.log(pos / (pos + neg)))
    assert contrastive_loss(logits).item() == pytest.approx(sum(expected_losses) / b, rel=1e-10)


def test_proxy_top1_counts_rows_where_positive_wins():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, -1.0], [5.0, 4.0, 4.9], [1.0, 2.0, 0.0]])
    assert proxy_top1(logits).item() == pytest.approx(0.5)


def test_mixing_uses_each_querys_own_hard_set():
    b, d, k, n, s, sp = 6, 16, 64, 5, 7, 4
    q, queue = unit(b, d, seed=4), unit(k, d, seed=5)
    m = mix_hard_negatives(q, queue, n, s, sp, generator=torch.Generator().manual_seed(0))
    assert m.synthetic.shape == (b, s + sp, d)
    # every synthetic point is a unit vector
    torch.testing.assert_close(m.synthetic.norm(dim=-1), torch.ones(b, s + sp, dtype=q.dtype))
    hard_sets = []
    for i in range(b):
        # the hard set of query i is its own top-N by q·n, computed independently here
        own = torch.topk(queue @ q[i], n).indices
        assert set(m.hard_idx[i].tolist()) == set(own.tolist())
        hard_sets.append(set(own.tolist()))
        hard = queue[m.hard_idx[i]]
        for p in range(s):
            a = m.alpha[i, p].item()
            assert 0.0 < a < 1.0
            ii, jj = m.pair_i[i, p].item(), m.pair_j[i, p].item()
            assert ii != jj  # distinct members of the hard set when N >= 2
            mix = F.normalize(a * hard[ii] + (1 - a) * hard[jj], dim=0)
            torch.testing.assert_close(m.synthetic[i, p], mix)
        for p in range(sp):
            beta = m.beta[i, p].item()
            assert 0.0 <= beta < 0.5
            mix = F.normalize(beta * q[i] + (1 - beta) * hard[m.neg_j[i, p]], dim=0)
            torch.testing.assert_close(m.synthetic[i, s + p], mix)
    # the pitfall: different queries really have different hard sets here, so a mix-up would show
    assert len({frozenset(h) for h in hard_sets}) > 1


def test_type1_points_lie_in_the_span_of_own_hard_negatives_only():
    # Queries aligned with disjoint blocks of the queue: any cross-query mixing breaks the span.
    d, n = 8, 3
    queue = torch.eye(d, dtype=torch.float64)  # K = 8 orthonormal negatives
    q = F.normalize(
        torch.tensor([[1.0, 1, 1, 0, 0, 0, 0, 0.1], [0, 0, 0, 1, 1, 1, 0.1, 0]], dtype=torch.float64), dim=1
    )
    m = mix_hard_negatives(q, queue, n, s=20, s_prime=0, generator=torch.Generator().manual_seed(1))
    assert set(m.hard_idx[0].tolist()) == {0, 1, 2} and set(m.hard_idx[1].tolist()) == {3, 4, 5}
    assert m.synthetic[0, :, 3:].abs().max() == 0 and m.synthetic[1, :, :3].abs().max() == 0


def test_edge_cases_s_greater_than_n_and_zero_counts():
    q, queue = unit(3, 8, seed=6), unit(10, 8, seed=7)
    assert mix_hard_negatives(q, queue, 2, s=9, s_prime=0).synthetic.shape == (3, 9, 8)
    assert mix_hard_negatives(q, queue, 4, s=0, s_prime=3).synthetic.shape == (3, 3, 8)
    assert mix_hard_negatives(q, queue, 4, s=0, s_prime=0).synthetic.shape == (3, 0, 8)
    one = mix_hard_negatives(q, queue, 1, s=2, s_prime=0)
    torch.testing.assert_close(one.synthetic[:, 0], queue[one.hard_idx[:, 0]])  # N = 1 mixes n with itself
    with pytest.raises(ValueError, match="n_hard must be in"):
        mix_hard_negatives(q, queue, 11, 1, 1)


def test_mochi_logits_layout_and_gradients():
    b, d, k, n, s, sp, t = 4, 8, 20, 5, 3, 2, 0.2
    q = unit(b, d, seed=8).requires_grad_(True)
    key = unit(b, d, seed=9)
    queue = unit(k, d, seed=10).requires_grad_(True)
    m = mix_hard_negatives(q, queue, n, s, sp)
    assert not m.synthetic.requires_grad  # built from detached tensors
    logits = mochi_logits(q, key, queue.detach(), m.synthetic, t)
    assert logits.shape == (b, 1 + k + s + sp)
    torch.testing.assert_close(logits[:, : 1 + k], moco_logits(q, key, queue.detach(), t))
    expected_syn = torch.stack([m.synthetic[i] @ q[i] for i in range(b)]) / t
    torch.testing.assert_close(logits[:, 1 + k :], expected_syn)
    contrastive_loss(logits).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert queue.grad is None  # no gradient reaches the queue


def test_gradient_flows_only_through_the_q_of_the_dot_product():
    # d loss / d q with type-2 points must equal the gradient with those points held constant.
    b, d, k = 3, 6, 12
    q = unit(b, d, seed=11).requires_grad_(True)
    key, queue = unit(b, d, seed=12), unit(k, d, seed=13)
    m = mix_hard_negatives(q, queue, 4, 0, 5, generator=torch.Generator().manual_seed(3))
    g1 = torch.autograd.grad(contrastive_loss(mochi_logits(q, key, queue, m.synthetic, 0.2)), q)[0]
    q2 = q.detach().clone().requires_grad_(True)
    logits = torch.cat(
        [moco_logits(q2, key, queue, 0.2), torch.einsum("bd,bsd->bs", q2, m.synthetic.clone()) / 0.2], 1
    )
    g2 = torch.autograd.grad(contrastive_loss(logits), q2)[0]
    torch.testing.assert_close(g1, g2)
