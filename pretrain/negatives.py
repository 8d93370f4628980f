"""Pure statistics of the negatives one MoCo / MoCHi step sees, and the class oracle's mask.

No module state and no I/O; nothing here draws random numbers or needs a gradient, so logging them leaves
the training step unchanged (docs/protocols.md#negatives-during-pretraining). Shapes as in
:mod:`mochi.pretrain.losses`: ``B`` queries, ``K`` queue entries, ``N`` hard negatives, ``S = s + s'``
synthetic points per query. Labels are class indices, ``-1`` (:data:`UNKNOWN`) where unknown: the initial
random queue and unlabelled images. Only known labels ever count as a class match.

Ratios whose denominator varies (false-negative rates) are logged as a pair of per-query counts and
divided only after summing over a logging window or an epoch (:func:`ratios`): a pooled rate, defined as
soon as one labelled entry was seen, never a mean of undefined per-step rates.
"""

from __future__ import annotations

import torch

UNKNOWN = -1
PERCENTILES = (10, 50, 90)
# Logged rate -> the (numerator, denominator) counts each step records for it.
RATIOS = {
    "fn_rate_hard": ("fn_hard_same", "fn_hard_known"),
    "fn_rate_queue": ("fn_queue_same", "fn_queue_known"),
    "syn_from_fn": ("syn_fn", "syn_known"),
}


def same_class(labels: torch.Tensor, queue_labels: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: queue entry ``j`` has query ``b``'s class, both labels known.

    labels: (B,) long; queue_labels: (K,) long; ``-1`` = unknown, never a match.
    """
    known = (labels >= 0).unsqueeze(1) & (queue_labels >= 0).unsqueeze(0)
    return (labels.unsqueeze(1) == queue_labels.unsqueeze(0)) & known


def oracle_mask(l_neg: torch.Tensor, labels: torch.Tensor, queue_labels: torch.Tensor) -> torch.Tensor:
    """The class oracle: ``l_neg`` (B, K) with every same-class entry set to ``-inf``, out of place.

    A ``-inf`` logit adds ``exp(-inf) = 0`` to the softmax and gets no gradient, so the loss is that of the
    queue without those entries; ``topk`` ranks them last, so the hard set never contains them while a
    query has at least N other entries.
    """
    return l_neg.masked_fill(same_class(labels, queue_labels), float("-inf"))


def positive_rank(logits: torch.Tensor) -> torch.Tensor:
    """(B,) the rank of the positive (column 0) among all logits: 0 when it is the largest, else how many
    negatives score strictly higher. logits: (B, 1 + negatives)."""
    return (logits[:, 1:] > logits[:, :1]).sum(dim=1)


def queue_false_negatives(
    labels: torch.Tensor, queue_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query mean counts (same class, known label) over the whole queue, for queries with a known label.

    Sorted-search counts: O(K log K + B log K), no (B, K) table and no host synchronisation.
    """
    sorted_labels = queue_labels.sort().values
    same = torch.searchsorted(sorted_labels, labels, right=True) - torch.searchsorted(sorted_labels, labels)
    known_query = labels >= 0
    same = torch.where(known_query, same, 0)
    known = known_query.long() * (queue_labels >= 0).sum()
    return same.float().mean(), known.float().mean()


def hard_false_negatives(
    labels: torch.Tensor, queue_labels: torch.Tensor, hard_idx: torch.Tensor
) -> torch.Tensor:
    """(B, N) bool: hard negative ``hard_idx[b, i]`` (a queue index) has query ``b``'s class, both known."""
    hard_labels = queue_labels[hard_idx]
    return (hard_labels == labels.unsqueeze(1)) & (hard_labels >= 0) & (labels >= 0).unsqueeze(1)


def synthetic_from_false_negatives(
    fn_hard: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor, neg_j: torch.Tensor
) -> torch.Tensor:
    """(B, s + s') bool: the synthetic point was mixed from a false negative — a type-1 point when either of
    its two hard negatives is one, a type-2 point when its hard negative is. fn_hard: (B, N) from
    :func:`hard_false_negatives`; positions as in :class:`~mochi.pretrain.losses.Mixing`."""
    type1 = fn_hard.gather(1, pair_i) | fn_hard.gather(1, pair_j)
    return torch.cat([type1, fn_hard.gather(1, neg_j)], dim=1)


def percentiles(x: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """``{name}_p10``, ``_p50``, ``_p90`` of all values of ``x`` (linear interpolation, as numpy)."""
    qs = torch.tensor([p / 100 for p in PERCENTILES], device=x.device, dtype=torch.float32)
    values = torch.quantile(x.detach().float().reshape(-1), qs)
    return {f"{name}_p{p}": v for p, v in zip(PERCENTILES, values, strict=True)}


@torch.no_grad()
def negative_stats(
    logits: torch.Tensor,
    n_queue: int,
    temperature: float,
    labels: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
    hard_idx: torch.Tensor | None = None,
    mixing_positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    mixing_hard_idx: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every per-step statistic, as 0-d tensors on the logits' device (read back with the loss).

    logits: (B, 1 + K + S) the step's logits ``[pos | queue | synthetic] / temperature`` as the loss saw
    them (so with the oracle's ``-inf``). ``labels`` (B,) and ``queue_labels`` (K,): class labels, or None
    when the data has none (no label statistics then). ``hard_idx`` (B, N): each query's N hardest queue
    entries by raw similarity (before the oracle), for ``fn_rate_hard``. ``mixing_positions``:
    ``(pair_i, pair_j, neg_j)`` of the step's mixing and ``mixing_hard_idx`` the hard set they index.
    """
    logits = logits.detach()
    pos, neg, syn = logits[:, 0], logits[:, 1 : 1 + n_queue], logits[:, 1 + n_queue :]
    rank = positive_rank(logits).float()
    hardest = neg.max(dim=1).values  # the hardest real negative (after the oracle, if on)
    stats = {"pos_rank": rank.mean(), "pos_rank_p50": rank.median()}
    stats |= percentiles(pos * temperature, "pos_sim")
    stats |= percentiles(hardest * temperature, "hardest_sim")
    if syn.shape[1]:
        stats["syn_harder"] = (syn > hardest.unsqueeze(1)).float().mean()
        stats |= percentiles(syn * temperature, "syn_sim")
    if labels is None or queue_labels is None:
        return stats
    stats["fn_queue_same"], stats["fn_queue_known"] = queue_false_negatives(labels, queue_labels)
    if hard_idx is not None:
        fn = hard_false_negatives(labels, queue_labels, hard_idx)
        known = (queue_labels[hard_idx] >= 0) & (labels >= 0).unsqueeze(1)
        stats["fn_hard_same"], stats["fn_hard_known"] = fn.sum(1).float().mean(), known.sum(1).float().mean()
    if mixing_positions is not None and mixing_hard_idx is not None and syn.shape[1]:
        fn_mix = hard_false_negatives(labels, queue_labels, mixing_hard_idx)
        from_fn = synthetic_from_false_negatives(fn_mix, *mixing_positions)
        stats["syn_fn"] = from_fn.sum(1).float().mean()
        stats["syn_known"] = (labels >= 0).float().mean() * from_fn.shape[1]
    return stats


def ratios(values: dict[str, float]) -> dict[str, float]:
    """``values`` with each :data:`RATIOS` pair of summed counts replaced by its rate; a rate whose
    denominator is 0 (nothing labelled seen yet) is left out rather than logged as a made-up number."""
    out = dict(values)
    for name, (num, den) in RATIOS.items():
        if num in out and den in out:
            n, d = out.pop(num), out.pop(den)
            if d > 0:
                out[name] = n / d
    return out
