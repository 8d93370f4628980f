"""Pure functions for the contrastive objective: MoCo logits, MoCHi hard-negative mixing, loss.

No module state and no I/O: every function maps tensors to tensors, so each can be tested against a
direct formula. Shapes: ``B`` queries, ``D`` embedding dim, ``K`` queue length, ``N`` hard negatives,
``s`` / ``s_prime`` synthetic negatives of type 1 / type 2 per query.

Logit layout (docs/protocols.md#mochi-hard-negative-mixing, step 4)::

    [ q·k | q·n_1 … q·n_K | q·h_1 … q·h_s | q·h'_1 … q·h'_s' ] / temperature,  target 0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def moco_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    l_neg: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoCo logits ``[q·k, q·n_1, …, q·n_K] / temperature``.

    q: (B, D) unit rows, the queries (gradient flows through them).
    k: (B, D) unit rows, the positive keys (no gradient expected).
    queue: (K, D) unit rows, the negatives.
    l_neg: (B, K) ``q @ queue.T`` when the caller has it already (e.g. with the oracle's ``-inf``).
    Returns (B, 1 + K) logits; the positive is column 0.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)
    if l_neg is None:
        l_neg = q @ queue.T
    return torch.cat([l_pos, l_neg], dim=1) / temperature


@dataclass
class Mixing:
    """Synthetic hard negatives for a batch of queries (all tensors detached).

    synthetic: (B, s + s_prime, D) unit rows: the ``s`` type-1 points then the ``s_prime`` type-2 points.
    hard_idx: (B, N) queue indices of each query's N hardest negatives, hardest first.
    pair_i, pair_j: (B, s) positions in ``[0, N)`` of the two hard negatives each type-1 point mixes.
    alpha: (B, s) type-1 weights, ``h = normalize(alpha·n_i + (1 - alpha)·n_j)``.
    neg_j: (B, s_prime) positions in ``[0, N)`` of the hard negative each type-2 point mixes.
    beta: (B, s_prime) type-2 weights in [0, 0.5), ``h' = normalize(beta·q + (1 - beta)·n_j)``.
    hard_sim: (B, N) the similarities ``q·n`` of the hard negatives.
    """

    synthetic: torch.Tensor
    hard_idx: torch.Tensor
    pair_i: torch.Tensor
    pair_j: torch.Tensor
    alpha: torch.Tensor
    neg_j: torch.Tensor
    beta: torch.Tensor
    hard_sim: torch.Tensor


def mix_hard_negatives(
    q: torch.Tensor,
    queue: torch.Tensor,
    n_hard: int,
    s: int,
    s_prime: int,
    generator: torch.Generator | None = None,
    sim: torch.Tensor | None = None,
) -> Mixing:
    """MoCHi: synthesise hard negatives for every query from its own N hardest queue negatives.

    q: (B, D) unit rows. queue: (K, D) unit rows. sim: (B, K) ``q @ queue.T`` when the caller has it
    already (MoCo's negative logits before the division by the temperature), so the top-N costs no second
    matmul; computed here otherwise. Fully vectorised over queries and points.

    For query b, ``hard_idx[b]`` are the N queue rows with the largest ``q_b·n``. Type 1 mixes two
    distinct members of that set (when N >= 2) with ``alpha ~ U(0, 1)``; type 2 mixes the query itself
    with one member using ``beta ~ U(0, 0.5)`` so the query always weighs less than the negative.
    Every point is L2-normalised. All inputs are detached: no gradient reaches the queue or the
    synthetic points (docs/protocols.md#mochi-hard-negative-mixing, step 5). ``s`` may exceed N;
    ``s = 0`` and ``s_prime = 0`` are valid.

    Only the ``s + s_prime`` rows each query mixes are gathered from the queue (never the (B, N, D) hard
    set), straight into the output, and the arithmetic runs in place; the values and the order of the
    random draws are those of the direct formulas (``tests/test_losses.py`` checks bit-equality).
    """
    if q.dim() != 2 or queue.dim() != 2 or q.shape[1] != queue.shape[1]:
        raise ValueError(f"expected q (B, D) and queue (K, D), got {tuple(q.shape)} and {tuple(queue.shape)}")
    n_queue = queue.shape[0]
    if not 1 <= n_hard <= n_queue:
        raise ValueError(f"n_hard must be in [1, K={n_queue}], got {n_hard}")
    if s < 0 or s_prime < 0:
        raise ValueError(f"s and s_prime must be >= 0, got {s} and {s_prime}")
    if sim is not None and sim.shape != (q.shape[0], n_queue):
        raise ValueError(f"expected sim (B, K) = {(q.shape[0], n_queue)}, got {tuple(sim.shape)}")

    with torch.no_grad():
        q = q.detach()
        queue = queue.detach()
        b, d = q.shape
        dev = q.device
        sim = q @ queue.T if sim is None else sim.detach()
        hard_sim, hard_idx = sim.topk(n_hard, dim=1)  # (B, N), hardest first

        # Type 1: i uniform in [0, N); j = i + U{1..N-1} mod N so i != j whenever N >= 2.
        pair_i = torch.randint(0, n_hard, (b, s), device=dev, generator=generator)
        if n_hard >= 2:
            offset = torch.randint(1, n_hard, (b, s), device=dev, generator=generator)
            pair_j = (pair_i + offset) % n_hard
        else:
            pair_j = pair_i.clone()
        alpha = torch.rand((b, s), device=dev, generator=generator, dtype=q.dtype)
        # Type 2: the query mixed into one hard negative, beta ~ U(0, 0.5).
        neg_j = torch.randint(0, n_hard, (b, s_prime), device=dev, generator=generator)
        beta = 0.5 * torch.rand((b, s_prime), device=dev, generator=generator, dtype=q.dtype)

        def rows(pos: torch.Tensor) -> torch.Tensor:
            """(B, P) positions in each hard set -> (B, P, D) queue rows (index_select: a third of the
            time of ``queue[idx]`` advanced indexing on CPU)."""
            flat = hard_idx.gather(1, pos).reshape(-1)
            return queue.index_select(0, flat).view(*pos.shape, d)

        synthetic = torch.empty((b, s + s_prime, d), device=dev, dtype=q.dtype)
        h1, h2 = synthetic[:, :s], synthetic[:, s:]
        a = alpha.unsqueeze(-1)
        torch.mul(a, rows(pair_i), out=h1)  # alpha·n_i
        h1.add_(rows(pair_j).mul_(1 - a))  # + (1 - alpha)·n_j
        bt = beta.unsqueeze(-1)
        torch.mul(bt, q.unsqueeze(1), out=h2)  # beta·q
        h2.add_(rows(neg_j).mul_(1 - bt))  # + (1 - beta)·n_j
        # F.normalize's formula, in place over both types at once.
        synthetic.div_(synthetic.norm(dim=-1, keepdim=True).clamp_min_(1e-12))
    return Mixing(synthetic, hard_idx, pair_i, pair_j, alpha, neg_j, beta, hard_sim)


def mochi_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    synthetic: torch.Tensor,
    temperature: float,
    l_neg: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoCHi logits ``[q·k | q·queue | q·synthetic] / temperature``.

    q, k: (B, D) unit rows; queue: (K, D); synthetic: (B, S, D) unit rows, each query's own points.
    l_neg: (B, K) ``q @ queue.T`` when the caller has it already (the same tensor ``mix_hard_negatives``
    took its top-N from), so the B×K matmul runs once per step.
    Returns (B, 1 + K + S); gradient flows only through the ``q`` of each dot product.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)
    if l_neg is None:
        l_neg = q @ queue.T
    l_syn = torch.einsum("bd,bsd->bs", q, synthetic.detach())
    # One concatenation and one division over all 1 + K + S columns.
    return torch.cat([l_pos, l_neg, l_syn], dim=1) / temperature


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE: cross-entropy with the positive in column 0. logits: (B, C) -> scalar mean loss."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def proxy_top1(logits: torch.Tensor) -> torch.Tensor:
    """Proxy-task top-1: fraction of rows whose positive (column 0) is the largest logit."""
    return (logits.argmax(dim=1) == 0).float().mean()
