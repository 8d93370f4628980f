"""The MoCo-v2 model: query and key encoders, momentum update, queue, shuffle-BN / split-BN.

The encoders stay untouched torchvision ResNets (the MLP head replaces ``fc``, as in the reference),
so ``module.encoder_q.*`` loads into ``torchvision.models.resnetXX()`` minus ``fc``. All the
contrastive math is delegated to the pure functions in :mod:`mochi.pretrain.losses`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mochi import distributed as dist_utils
from mochi.pretrain.losses import (
    Mixing,
    contrastive_loss,
    mix_hard_negatives,
    mochi_logits,
    moco_logits,
    proxy_top1,
)
from mochi.pretrain.negatives import UNKNOWN, negative_stats, oracle_mask
from mochi.pretrain.split_bn import split_batchnorm
from mochi.resnet import build_torchvision_resnet


def build_encoder(arch: str, dim: int = 128, mlp: bool = True, small_stem: bool = False) -> nn.Module:
    """A torchvision ResNet whose ``fc`` outputs ``dim`` features (an MLP head when ``mlp``).

    ``small_stem`` swaps the 7×7/2 conv + max-pool for a 3×3/1 conv and no pooling, the usual stem for
    32 px images; parameter names are unchanged.
    """
    net = build_torchvision_resnet(arch, small_stem, num_classes=dim)
    if mlp:
        hidden = net.fc.weight.shape[1]
        net.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), net.fc)
    return net


@dataclass
class _Direction:
    """One direction of a step: queries against their positives and the queue."""

    logits: torch.Tensor  # (B, 1 + K [+ s + s']), positive first
    loss: torch.Tensor
    mixing: Mixing | None
    raw: torch.Tensor | None  # (B, K) q·queue before the oracle, when computed


def _stack_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """The directions' rows stacked; the one tensor itself (no copy) for the asymmetric step."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _cat_mixing(parts: list[Mixing | None]) -> Mixing | None:
    """The mixings of the step's directions as one, rows stacked in direction order (None without mixing)."""
    if parts[0] is None:
        return None
    fields = {f.name: _stack_rows([getattr(m, f.name) for m in parts]) for f in dataclasses.fields(Mixing)}
    return Mixing(**fields)


@dataclass(frozen=True)
class MochiParams:
    """MoCHi (N, s, s'): hard set size, type-1 and type-2 synthetic points per query."""

    n_hard: int
    s: int
    s_prime: int


class MoCo(nn.Module):
    """MoCo-v2 with optional MoCHi hard-negative mixing.

    Buffers follow the reference layout: ``queue`` (dim, K) with unit columns and ``queue_ptr`` (1,), plus
    ``queue_labels`` (K,): the class of each queue entry's image, ``-1`` where unknown (the initial random
    queue, unlabelled data). ``forward`` performs the momentum update, computes keys with shuffle-BN, the
    loss, and enqueues the keys (and labels) gathered from every rank.

    ``analysis_n``: log the negatives' statistics (:mod:`mochi.pretrain.negatives`), with the N hardest for
    the false-negative rate (None: off). ``oracle``: remove same-class queue entries from each query's
    negatives before the loss and the hard-set selection (labels required).

    ``symmetric``: each view is both a query and a key (docs/protocols.md#symmetric-loss): the loss is
    ``L(q1, k2) + L(q2, k1)``, both against the queue as it was before the step, and both views' keys are
    enqueued (``im_q``'s first): 2B queue entries per step. Off: the reference's asymmetric step, unchanged.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        mlp: bool = True,
        small_stem: bool = False,
        bn_splits: int = 1,
        mochi: MochiParams | None = None,
        analysis_n: int | None = None,
        oracle: bool = False,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        if mochi is not None and mochi.n_hard > queue_size:
            raise ValueError(f"MoCHi N={mochi.n_hard} exceeds the queue size K={queue_size}")
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.mochi = mochi
        self.analysis_n = None if analysis_n is None else min(analysis_n, queue_size)
        self.oracle = oracle
        self.symmetric = symmetric
        # bn_splits > 1: each of that many groups of the batch gets its own BN statistics (split BN), in
        # the BN layers themselves so that the convolutions still run on the whole batch.
        self.encoder_q = split_batchnorm(build_encoder(arch, dim, mlp, small_stem), bn_splits)
        self.encoder_k = split_batchnorm(build_encoder(arch, dim, mlp, small_stem), bn_splits)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue_labels", torch.full((queue_size,), UNKNOWN, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θk ← m·θk + (1 − m)·θq over parameters (BN running stats of the key encoder are its own)."""
        k_params = list(self.encoder_k.parameters())
        q_params = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(k_params, self.momentum)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def compute_keys(self, im_k: torch.Tensor, generator: torch.Generator | None = None):
        """Keys with shuffle-BN. Returns (local keys (B, D), keys of all ranks in rank order (G·B, D)).

        Under DDP the global batch is permuted across ranks (permutation drawn on rank 0 and broadcast),
        each rank encodes its slice, and the gathered keys are un-permuted. On one device the batch is
        permuted locally and its ``bn_splits`` contiguous groups are normalised separately (split BN), which
        has the same effect.
        """
        rank = dist_utils.rank()
        b = im_k.shape[0]
        x_all = dist_utils.all_gather_cat(im_k)
        perm = torch.randperm(x_all.shape[0], device=im_k.device, generator=generator)
        perm = dist_utils.broadcast(perm, src=0)
        local = x_all[perm[rank * b : (rank + 1) * b]]
        k = F.normalize(self.encoder_k(local).float(), dim=1)
        k_shuffled = dist_utils.all_gather_cat(k)
        k_all = torch.empty_like(k_shuffled)
        k_all[perm] = k_shuffled  # invert the permutation exactly
        return k_all[rank * b : (rank + 1) * b], k_all

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Replace the oldest ``len(keys)`` queue columns with ``keys`` (G·B, D), and their labels with
        ``labels`` (G·B,) in the same order (unknown, -1, when None)."""
        n = keys.shape[0]
        ptr = int(self.queue_ptr)
        if self.queue_size % n != 0:
            raise RuntimeError(f"queue size {self.queue_size} is not a multiple of the global batch {n}")
        self.queue[:, ptr : ptr + n] = keys.T.to(self.queue.dtype)
        if labels is None:
            self.queue_labels[ptr : ptr + n] = UNKNOWN
        else:
            self.queue_labels[ptr : ptr + n] = labels
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    def forward(
        self,
        im_q: torch.Tensor,
        im_k: torch.Tensor,
        mix: bool = False,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One MoCo / MoCHi step's forward. im_q, im_k: (B, 3, H, W) two views of the same images;
        labels: (B,) their classes (-1 unknown) or None.

        Returns ``loss`` (with grad) and detached statistics: ``top1`` (proxy task), ``pos_sim``, with
        mixing ``hard_sim`` / ``synthetic_sim`` (mean ``q·n`` over hard negatives / synthetic points), and
        with ``analysis_n`` those of :func:`~mochi.pretrain.negatives.negative_stats`. With ``symmetric``
        the statistics are over the queries of both directions (2B rows).
        """
        if self.oracle and labels is None:
            raise ValueError("the class oracle needs the labels of the batch")
        views = ((im_q, im_k), (im_k, im_q)) if self.symmetric else ((im_q, im_k),)
        qs = [F.normalize(self.encoder_q(view).float(), dim=1) for view, _ in views]
        with torch.no_grad():
            self.momentum_update()
            keys = [self.compute_keys(view, generator) for _, view in views]
            # Same rank order as k_all: entry j of the enqueued block has the label of key j.
            labels_all = None if labels is None else dist_utils.all_gather_cat(labels)
        queue = self.queue.T.contiguous().float()  # (K, D) rows, copied so the enqueue below can't alias it
        parts = [
            self._direction(q, k, queue, mix, generator, labels) for q, (k, _) in zip(qs, keys, strict=True)
        ]
        logits = _stack_rows([p.logits for p in parts])
        loss = sum((p.loss for p in parts[1:]), parts[0].loss)  # summed, as MoCo v3
        stats: dict[str, torch.Tensor] = {}
        m = _cat_mixing([p.mixing for p in parts])
        if m is not None:
            stats["hard_sim"] = m.hard_sim.mean()
            n_syn = m.synthetic.shape[1]
            syn = logits[:, logits.shape[1] - n_syn :].detach() * self.temperature
            stats["synthetic_sim"] = syn.mean() if n_syn else torch.zeros((), device=logits.device)
        stats["top1"] = proxy_top1(logits.detach())
        stats["pos_sim"] = (logits[:, 0].detach() * self.temperature).mean()
        if self.analysis_n is not None:  # before the enqueue: the queue labels the logits were made with
            raws = [p.raw for p in parts]
            raw = None if any(r is None for r in raws) else _stack_rows(raws)
            both = None if labels is None else _stack_rows([labels] * len(parts))
            stats |= self._analysis(logits, raw, both, m)
        for _, k_all in reversed(keys):  # symmetric: im_q's keys (k1), then im_k's (k2)
            self.enqueue(k_all, labels_all)
        return {"loss": loss, **stats}

    def _direction(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        queue: torch.Tensor,
        mix: bool,
        generator: torch.Generator | None,
        labels: torch.Tensor | None,
    ) -> _Direction:
        """The logits and loss of queries ``q`` against positives ``k`` and the queue (with MoCHi's points
        when ``mix``)."""
        m = None
        raw = None  # (B, K) q·queue before the oracle, when computed
        # The contrastive part runs in fp32 even under AMP: logits / τ need more than bf16's 8 bits.
        with torch.autocast(q.device.type, enabled=False):
            l_neg = None
            if self.oracle:
                raw = q @ queue.T
                l_neg = oracle_mask(raw, labels, self.queue_labels)
            if mix and self.mochi is not None:
                if l_neg is None:
                    l_neg = raw = q @ queue.T  # shared: MoCo's negative logits and the top-N of the hard set
                m = mix_hard_negatives(
                    q, queue, self.mochi.n_hard, self.mochi.s, self.mochi.s_prime, generator, sim=l_neg
                )
                logits = mochi_logits(q, k, queue, m.synthetic, self.temperature, l_neg=l_neg)
            else:
                logits = moco_logits(q, k, queue, self.temperature, l_neg=l_neg)
            loss = contrastive_loss(logits)
        return _Direction(logits, loss, m, raw)

    @torch.no_grad()
    def _analysis(
        self, logits: torch.Tensor, raw: torch.Tensor | None, labels: torch.Tensor | None, m: Mixing | None
    ) -> dict[str, torch.Tensor]:
        """The step's negative statistics; no random draws, no gradient, the loss untouched."""
        if labels is None:
            return negative_stats(logits, self.queue_size, self.temperature)
        if m is not None and not self.oracle and m.hard_idx.shape[1] == self.analysis_n:
            hard_idx = m.hard_idx  # the mixing's top-N is the raw top-N: reuse it
        else:
            sim = raw if raw is not None else logits[:, 1 : 1 + self.queue_size]  # same order as q·queue
            hard_idx = sim.detach().topk(self.analysis_n, dim=1).indices
        return negative_stats(
            logits,
            self.queue_size,
            self.temperature,
            labels,
            self.queue_labels,
            hard_idx,
            (m.pair_i, m.pair_j, m.neg_j) if m is not None else None,
            m.hard_idx if m is not None else None,
        )
