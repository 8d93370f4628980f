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


def reference_mix(q, queue, n_hard, s, s_prime, generator):
    """The direct formulation, kept as the reference: materialise each query's (N, D) hard set, gather
    from it with expanded indices, mix out of place. Same random draws in the same order."""
    b, d = q.shape
    sim, idx = (q @ queue.T).topk(n_hard, dim=1)
    hard = queue[idx]
    pair_i = torch.randint(0, n_hard, (b, s), generator=generator)
    if n_hard >= 2:
        pair_j = (pair_i + torch.randint(1, n_hard, (b, s), generator=generator)) % n_hard
    else:
        pair_j = pair_i.clone()
    alpha = torch.rand((b, s), generator=generator, dtype=q.dtype)
    n_i = torch.gather(hard, 1, pair_i.unsqueeze(-1).expand(b, s, d))
    n_j = torch.gather(hard, 1, pair_j.unsqueeze(-1).expand(b, s, d))
    h1 = F.normalize(alpha.unsqueeze(-1) * n_i + (1 - alpha.unsqueeze(-1)) * n_j, dim=-1)
    neg_j = torch.randint(0, n_hard, (b, s_prime), generator=generator)
    beta = 0.5 * torch.rand((b, s_prime), generator=generator, dtype=q.dtype)
    n_j2 = torch.gather(hard, 1, neg_j.unsqueeze(-1).expand(b, s_prime, d))
    h2 = F.normalize(beta.unsqueeze(-1) * q.unsqueeze(1) + (1 - beta.unsqueeze(-1)) * n_j2, dim=-1)
    return torch.cat([h1, h2], dim=1), idx, pair_i, pair_j, alpha, neg_j, beta, sim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("b", "d", "k", "n", "s", "sp"),
    [
        (8, 32, 256, 16, 16, 4),
        (5, 128, 512, 64, 64, 16),
        (3, 8, 10, 2, 9, 0),
        (4, 8, 10, 1, 3, 2),
        (4, 8, 20, 4, 0, 0),
    ],
)
def test_mixing_is_bit_identical_to_the_direct_formulation(dtype, b, d, k, n, s, sp):
    # The fast path gathers only the mixed rows and works in place; for a fixed generator it must
    # reproduce the direct formulation exactly, with and without the caller's q·queue.
    q, queue = unit(b, d, seed=20).to(dtype), unit(k, d, seed=21).to(dtype)
    expected = reference_mix(q, queue, n, s, sp, torch.Generator().manual_seed(7))
    for sim in (None, q @ queue.T):
        m = mix_hard_negatives(q, queue, n, s, sp, torch.Generator().manual_seed(7), sim=sim)
        got = (m.synthetic, m.hard_idx, m.pair_i, m.pair_j, m.alpha, m.neg_j, m.beta, m.hard_sim)
        for name, x, y in zip(
            ("synthetic", "hard_idx", "i", "j", "alpha", "neg_j", "beta", "sim"), got, expected, strict=True
        ):
            assert x.dtype == y.dtype and torch.equal(x, y), name


def test_mochi_logits_with_shared_l_neg_are_bit_identical_to_separate_logits():
    b, d, k, t = 6, 16, 40, 0.2
    q, key, queue = unit(b, d, seed=22).float(), unit(b, d, seed=23).float(), unit(k, d, seed=24).float()
    syn = mix_hard_negatives(q, queue, 8, 5, 3, torch.Generator().manual_seed(0)).synthetic
    # the earlier formulation: MoCo's logits, then the synthetic columns divided separately
    expected = torch.cat([moco_logits(q, key, queue, t), torch.einsum("bd,bsd->bs", q, syn) / t], dim=1)
    assert torch.equal(mochi_logits(q, key, queue, syn, t), expected)
    assert torch.equal(mochi_logits(q, key, queue, syn, t, l_neg=q @ queue.T), expected)


def test_mixing_rejects_a_sim_of_the_wrong_shape():
    q, queue = unit(3, 8, seed=25), unit(10, 8, seed=26)
    with pytest.raises(ValueError, match=r"expected sim \(B, K\)"):
        mix_hard_negatives(q, queue, 2, 1, 1, sim=torch.zeros(3, 9, dtype=q.dtype))
