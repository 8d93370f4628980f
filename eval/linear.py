"""Linear classification on a frozen backbone: three protocols (docs/protocols.md#linear-classification).

- ``moco``: the reference ``main_lincls.py`` protocol: augmented images through the frozen backbone (kept
  in ``eval()`` mode), only ``fc`` trains (init N(0, 0.01), bias 0), SGD lr 30, momentum 0.9, wd 0,
  batch 256, 100 epochs, lr x0.1 at epochs 60 and 80; afterwards every backbone tensor is checked unchanged.
- ``sgd-grid``: on cached features, one linear head per (lr, weight decay) pair, all trained together in
  one pass over the data (DINOv2 "AllClassifiers" idea); the best head on a held-out part of the training
  split is refit on the whole training split and reported on the test split.
- ``lbfgs``: multinomial logistic regression (scikit-learn, L-BFGS) with C over 10^linspace(-6, 5, 45)
  chosen on the held-out part, then refit on the whole training split (ssl-transfer / DINOv2).

The two cached-feature protocols standardise features with the training mean and standard deviation, so
that one lr / C grid fits every method's feature scale. Every default sits in
the protocol configs of :mod:`mochi.eval.config`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from mochi.errors import ConfigError, MochiError

from .config import CONFIGS, PROTOCOLS, LbfgsConfig, LinearConfig, MocoLinearConfig, SgdGridConfig
from .knn import classification_metrics

logger = logging.getLogger(__name__)

# Below this many training-matrix elements a multi-threaded BLAS spends more on waking and syncing its
# threads than on the products. benchmarks/bench_blas_threads.py measures it: on a 2-core CPU one thread
# is faster up to 10,000 x 2048 and two win from about 25,000 x 2048. The bound sits below that crossover,
# since machines with more cores gain more from threads on large problems.
SMALL_BLAS_PROBLEM = 1 << 24


# ---------------------------------------------------------------------------------------------------------
# Shared helpers


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator for the body only; its state (CPU and the current GPU) is restored after.

    Evaluations must not change the caller's random state, yet the reference protocol draws its head
    init and augmentations from the global generator.
    """
    devices = (
        [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def held_out_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train_idx, val_idx)``: ``fraction`` of each class (at least one image) held out."""
    if not 0 < fraction < 1:
        raise ConfigError("val_fraction", f"must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    x = torch.from_numpy(np.array(train, dtype=np.float32))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    return [(x - mean) / std] + [
        (torch.from_numpy(np.array(o, dtype=np.float32)) - mean) / std for o in others
    ]


def _check_labels(train_labels: np.ndarray) -> int:
    n_classes = len(np.unique(train_labels))
    if n_classes < 2:
        raise MochiError("the training split holds a single class: a linear classifier is meaningless")
    return n_classes


# ---------------------------------------------------------------------------------------------------------
# sgd-grid


def train_linear_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lrs: torch.Tensor,
    weight_decays: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    momentum: float = 0.9,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train H linear heads at once with SGD + momentum and a per-step cosine schedule.

    ``x: (N, D)``, ``y: (N,)``; ``lrs``, ``weight_decays``: ``(H,)`` (lr per 256 images). Every head sees
    the same batches; each has its own lr and decay. Returns ``W: (H, C, D)``, ``b: (H, C)``.
    """
    g = torch.Generator().manual_seed(seed)
    n, d = x.shape
    h = len(lrs)
    # All heads side by side in one (D, H*C) matrix: a batch costs one matrix product for every head.
    w = torch.zeros(d, h * n_classes)
    b = torch.zeros(h * n_classes)
    buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(b)
    lr_cols = (lrs * batch_size / 256).repeat_interleave(n_classes)
    wd_cols = weight_decays.repeat_interleave(n_classes)
    total = epochs * max(1, math.ceil(n / batch_size))
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            p = torch.softmax((xb @ w + b).view(len(idx), h, n_classes), dim=2)
            p[torch.arange(len(idx)), :, yb] -= 1  # d(mean CE)/d(logits), each head separately
            p = p.view(len(idx), h * n_classes) / len(idx)
            gw, gb = xb.T @ p, p.sum(0)
            scale = 0.5 * (1 + math.cos(math.pi * step / total))
            buf_w.mul_(momentum).add_(gw + wd_cols * w)
            buf_b.mul_(momentum).add_(gb)
            w -= (scale * lr_cols) * buf_w
            b -= (scale * lr_cols) * buf_b
            step += 1
    return w.T.reshape(h, n_classes, d).contiguous(), b.view(h, n_classes)


def linear_sgd_grid(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    config: SgdGridConfig | None = None,
    *,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns ``(metrics, details)``: test ``top1/top5/mean_per_class`` of the refit best head, and the
    chosen lr / weight decay with every head's held-out accuracy."""
    cfg = config or SgdGridConfig()
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    n_classes = max(int(train_labels.max()), int(test_labels.max())) + 1
    _check_labels(train_labels)
    tr, va = held_out_split(train_labels, cfg.val_fraction, seed)
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    lrs = torch.tensor([p[0] for p in grid])
    wds = torch.tensor([p[1] for p in grid])
    feats = np.asarray(train_features)
    x_tr, x_va = _standardise(feats[tr], feats[va])
    y = torch.from_numpy(train_labels)
    w, b = train_linear_heads(
        x_tr, y[tr], n_classes, lrs, wds, epochs=cfg.epochs, batch_size=cfg.batch_size,
        momentum=cfg.momentum, seed=seed,
    )  # fmt: skip
    val_acc = ((torch.einsum("nd,hcd->hnc", x_va, w) + b[:, None]).argmax(-1) == y[va]).double().mean(1)
    best = int(val_acc.argmax())
    lr, wd = grid[best]
    x_all, x_te = _standardise(feats, np.asarray(test_features))
    w, b = train_linear_heads(
        x_all, y, n_classes, lrs[best : best + 1], wds[best : best + 1], epochs=cfg.epochs,
        batch_size=cfg.batch_size, momentum=cfg.momentum, seed=seed,
    )  # fmt: skip
    scores = x_te @ w[0].T + b[0]
    metrics = classification_metrics(scores, torch.from_numpy(test_labels), n_classes)
    details = {
        "best_lr": lr,
        "best_weight_decay": wd,
        "val_top1": 100.0 * float(val_acc[best]),
        "grid_val_top1": {
            f"lr{p[0]:g}_wd{p[1]:g}": round(100.0 * float(a), 3) for p, a in zip(grid, val_acc, strict=True)
        },
        "n_train": len(tr),
        "n_val": len(va),
    }
    return metrics, details


# ---------------------------------------------------------------------------------------------------------
# lbfgs


def auto_blas_threads(n_samples: int, n_features: int) -> int | None:
    """BLAS threads for an L-BFGS fit on an ``n_samples x n_features`` matrix: 1 for a small problem,
    ``None`` (the library's own choice, usually every core) otherwise."""
    return 1 if n_samples * n_features < SMALL_BLAS_PROBLEM else None


def linear_lbfgs(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    config: LbfgsConfig | None = None,
    *,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns ``(metrics, details)``; the C sweep runs in increasing order, warm-started (same optimum,
    far fewer iterations), then the chosen C is refit on the whole training split."""
    cfg = config or LbfgsConfig()
    if cfg.blas_threads < 0:
        raise ConfigError("blas_threads", f"must be 0 (auto) or a positive count, got {cfg.blas_threads}")
    feats = np.asarray(train_features)
    threads = cfg.blas_threads or auto_blas_threads(*feats.shape)
    with threadpool_limits(limits=threads, user_api="blas"):
        metrics, details = _lbfgs_sweep(feats, train_labels, test_features, test_labels, cfg, seed)
    return metrics, {**details, "blas_threads": threads or "library default"}


def _lbfgs_sweep(
    feats: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    cfg: LbfgsConfig,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    n_classes = max(int(train_labels.max()), int(test_labels.max())) + 1
    _check_labels(train_labels)
    tr, va = held_out_split(train_labels, cfg.val_fraction, seed)
    x_tr, x_va = (t.numpy() for t in _standardise(feats[tr], feats[va]))
    clf = LogisticRegression(max_iter=cfg.max_iter, warm_start=True, random_state=seed)
    val_acc, best_fit = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(cfg.c_values):
            clf.set_params(C=c)
            clf.fit(x_tr, train_labels[tr])
            val_acc.append(float((clf.predict(x_va) == train_labels[va]).mean()))
            if val_acc[-1] > max(val_acc[:-1], default=-1.0):
                best_fit = (clf.coef_.copy(), clf.intercept_.copy())
            # The patience counts from the best value once accuracy has risen above the first C's: at tiny
            # C every image gets one class, and that flat start is not the optimum to stop after.
            rose = max(val_acc) > val_acc[0]
            if cfg.patience and rose and len(val_acc) - 1 - int(np.argmax(val_acc)) >= cfg.patience:
                break
        best = int(np.argmax(val_acc))
        c_best = sorted(cfg.c_values)[best]
        x_all, x_te = (t.numpy() for t in _standardise(feats, np.asarray(test_features)))
        # The refit starts from the held-out fit at the same C (held_out_split keeps every class in the
        # training part): the problem is strictly convex, so the optimum is the one reached from zero, in
        # fewer iterations.
        final = LogisticRegression(C=c_best, max_iter=cfg.max_iter, warm_start=True, random_state=seed)
        final.coef_, final.intercept_ = best_fit
        final.fit(x_all, train_labels)
    proba = np.zeros((len(x_te), n_classes))
    proba[:, final.classes_] = final.predict_proba(x_te)
    metrics = classification_metrics(torch.from_numpy(proba), torch.from_numpy(test_labels), n_classes)
    details = {
        "best_C": c_best,
        "val_top1": 100.0 * val_acc[best],
        "n_train": len(tr),
        "n_val": len(va),
        "n_iter_final": int(np.max(final.n_iter_)),
        "c_tried": len(val_acc),
    }
    return metrics, details


def config_dict(config: Any) -> dict[str, Any]:
    """The protocol's hyper-parameters as JSON values (the seed is recorded on its own)."""
    d = asdict(config)
    d.pop("seed", None)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# The reference protocol lives in its own module; its names are importable from here as well.
from .linear_moco import (  # noqa: E402
    BackboneChanged,
    backbone_snapshot,
    check_backbone_unchanged,
    linear_moco,
    moco_train_transform,
)

__all__ = [
    "CONFIGS",
    "PROTOCOLS",
    "BackboneChanged",
    "LbfgsConfig",
    "LinearConfig",
    "MocoLinearConfig",
    "SgdGridConfig",
    "auto_blas_threads",
    "backbone_snapshot",
    "check_backbone_unchanged",
    "held_out_split",
    "linear_lbfgs",
    "linear_moco",
    "linear_sgd_grid",
    "moco_train_transform",
    "torch_seeded",
    "train_linear_heads",
]
