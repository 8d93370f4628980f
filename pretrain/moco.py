"""The MoCo-v2 model: query and key encoders, momentum update, queue, shuffle-BN / split-BN.

The encoders stay untouched torchvision ResNets (the MLP head replaces ``fc``, as in the reference),
so ``module.encoder_q.*`` loads into ``torchvision.models.resnetXX()`` minus ``fc``. All the
contrastive math is delegated to the pure functions in :mod:`mochi.pretrain.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mochi import distributed as dist_utils
from mochi.pretrain.losses import contrastive_loss, mix_hard_negatives, mochi_logits, moco_logits, proxy_top1
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


@dataclass(frozen=True)
class MochiParams:
    """MoCHi (N, s, s'): hard set size, type-1 and type-2 synthetic points per query."""

    n_hard: int
    s: int
    s_prime: int


class MoCo(nn.Module):
    """MoCo-v2 with optional MoCHi hard-negative mixing.

    Buffers follow the reference layout: ``queue`` (dim, K) with unit columns and ``queue_ptr`` (1,).
    ``forward`` performs the momentum update, computes keys with shuffle-BN, the loss, and enqueues
    the keys gathered from every rank.
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
    ) -> None:
        super().__init__()
        if mochi is not None and mochi.n_hard > queue_size:
            raise ValueError(f"MoCHi N={mochi.n_hard} exceeds the queue size K={queue_size}")
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.bn_splits = bn_splits
        self.mochi = mochi
        # bn_splits > 1: each of that many groups of the batch gets its own BN statistics (split BN), in
        # the BN layers themselves so that the convolutions still run on the whole batch.
        self.encoder_q = split_batchnorm(build_encoder(arch, dim, mlp, small_stem), bn_splits)
        self.encoder_k = split_batchnorm(build_encoder(arch, dim, mlp, small_stem), bn_splits)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

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
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest ``len(keys)`` queue columns with ``keys`` (G·B, D)."""
        n = keys.shape[0]
        ptr = int(self.queue_ptr)
        if self.queue_size % n != 0:
            raise RuntimeError(f"queue size {self.queue_size} is not a multiple of the global batch {n}")
        self.queue[:, ptr : ptr + n] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    def forward(
        self,
        im_q: torch.Tensor,
        im_k: torch.Tensor,
        mix: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One MoCo / MoCHi step's forward. im_q, im_k: (B, 3, H, W) two views of the same images.

        Returns ``loss`` (with grad) and detached statistics: ``top1`` (proxy task), ``pos_sim``, and
        with mixing ``hard_sim`` / ``synthetic_sim`` (mean ``q·n`` over hard negatives / synthetic points).
        """
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k, k_all = self.compute_keys(im_k, generator)
        queue = self.queue.T.contiguous().float()  # (K, D) rows, copied so the enqueue below can't alias it
        stats: dict[str, torch.Tensor] = {}
        # The contrastive part runs in fp32 even under AMP: logits / τ need more than bf16's 8 bits.
        with torch.autocast(q.device.type, enabled=False):
            if mix and self.mochi is not None:
                l_neg = q @ queue.T  # shared: MoCo's negative logits and the top-N of the hard set
                m = mix_hard_negatives(
                    q, queue, self.mochi.n_hard, self.mochi.s, self.mochi.s_prime, generator, sim=l_neg
                )
                logits = mochi_logits(q, k, queue, m.synthetic, self.temperature, l_neg=l_neg)
                stats["hard_sim"] = m.hard_sim.mean()
                n_syn = m.synthetic.shape[1]
                syn = logits[:, logits.shape[1] - n_syn :].detach() * self.temperature
                stats["synthetic_sim"] = syn.mean() if n_syn else torch.zeros((), device=q.device)
            else:
                logits = moco_logits(q, k, queue, self.temperature)
            loss = contrastive_loss(logits)
        self.enqueue(k_all)
        stats["top1"] = proxy_top1(logits.detach())
        stats["pos_sim"] = (logits[:, 0].detach() * self.temperature).mean()
        return {"loss": loss, **stats}
