"""Evaluations end to end: backbone + data -> (cached) features -> protocol -> one result record.

Each ``evaluate_*`` function returns the record (see :mod:`mochi.eval.records`) without writing it; the
caller writes it once everything has succeeded, so a failed run leaves no record behind. Under
``torchrun`` the feature pass is sharded over ranks and only rank 0 computes metrics (others get None).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mochi import distributed as dist_utils
from mochi.errors import MochiError
from mochi.transforms import eval_transform

from . import knn as knn_lib
from . import linear as linear_lib
from .backbones import EvalBackbone
from .data import open_split
from .features import FeatureCache, Features, get_features
from .records import make_record


@dataclass
class EvalData:
    """Where the images come from and how features are computed (shared by every protocol)."""

    data: str = "fashion-mnist"
    data_root: str | None = None
    subset: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    limit_train: int | None = None
    limit_test: int | None = None
    image_size: int = 224
    crop_fraction: float | None = None
    batch_size: int = 256
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    cache_dir: str | None = None  # None: the default cache folder
    no_cache: bool = False
    dtype: str = "float32"
    progress: bool = False


def _split(cfg: EvalData, split: str, limit: int | None, transform):
    return open_split(
        cfg.data, split, root=cfg.data_root, subset=cfg.subset, transform=transform, limit=limit
    )


def _features(backbone: EvalBackbone, cfg: EvalData) -> tuple[Features, Features, dict, dict]:
    device = dist_utils.resolve_device(cfg.device)
    dist_utils.init_from_env(device.type)
    transform, spec = eval_transform(cfg.image_size, cfg.crop_fraction)
    cache = None if cfg.no_cache else FeatureCache(cfg.cache_dir)
    out = []
    for split, limit in ((cfg.train_split, cfg.limit_train), (cfg.test_split, cfg.limit_test)):
        ds = _split(cfg, split, limit, transform)
        feats = get_features(
            backbone, ds, transform_spec=spec, cache=cache, dtype=cfg.dtype, batch_size=cfg.batch_size,
            workers=cfg.workers, device=device, amp=cfg.amp, progress=cfg.progress,
        )  # fmt: skip
        out.append((feats, ds.identity(), len(ds.classes)))
    (train, train_id, n_classes), (test, test_id, _) = out
    data = {
        "dataset": train_id.get("name", cfg.data),
        "train": {**train_id, "split": cfg.train_split},
        "test": {**test_id, "split": cfg.test_split},
        "num_classes": n_classes,
        "transform": spec,
        "features": {"dtype": cfg.dtype, "dim": train.dim, "cached": [train.from_cache, test.from_cache]},
    }
    return train, test, data, {"n_classes": n_classes}


def evaluate_knn(
    backbone: EvalBackbone,
    cfg: EvalData,
    *,
    ks: Sequence[int] = knn_lib.DEFAULT_KS,
    temperatures: Sequence[float] = knn_lib.DEFAULT_TEMPERATURES,
    backend: str = "faiss",
) -> dict[str, Any] | None:
    """kNN record: ``metrics`` = headline ``top1/top5/mean_per_class`` (k=20, T=0.07 when requested) +
    ``headline`` (its setting name) + ``settings`` (``{"k20_T0.07": {...}, ...}`` for every pair)."""
    start = time.perf_counter()
    train, test, data, info = _features(backbone, cfg)
    if not dist_utils.is_main():
        return None
    knn_lib.check_settings(ks, temperatures, len(train), len(set(train.labels.tolist())))
    search_start = time.perf_counter()
    metrics = knn_lib.knn_classify(
        train.features, train.labels, test.features, test.labels, ks=ks, temperatures=temperatures,
        backend=backend, device=cfg.device, n_classes=info["n_classes"],
    )  # fmt: skip
    hyper = {
        "k": sorted(set(ks)),
        "T": list(temperatures),
        "backend": backend,
        "weighting": "exp(s/T)",
        "normalize": "l2",
        "image_size": cfg.image_size,
    }
    return make_record(
        task="knn",
        protocol="knn-weighted-vote",
        evaluated=backbone.evaluated,
        data=data,
        hyperparameters=hyper,
        metrics=metrics,
        seed=None,
        wall_time_s=round(time.perf_counter() - start, 3),
        extra={"timing": {"knn_s": round(time.perf_counter() - search_start, 3)}},
    )


def evaluate_linear(
    backbone: EvalBackbone,
    cfg: EvalData,
    *,
    protocol: str,
    config: Any = None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Linear record for ``protocol`` in ``moco`` / ``sgd-grid`` / ``lbfgs``; ``config`` the protocol's
    config dataclass (defaults when None). ``metrics``: test ``top1/top5/mean_per_class`` plus the
    protocol's choices (best lr / C, held-out accuracy)."""
    if protocol not in linear_lib.PROTOCOLS:
        raise MochiError(
            f"unknown linear protocol {protocol!r}: choose one of {', '.join(linear_lib.PROTOCOLS)}"
        )
    start = time.perf_counter()
    torch.manual_seed(seed)
    if protocol == "moco":
        config = config or linear_lib.MocoLinearConfig()
        device = dist_utils.resolve_device(cfg.device)
        if dist_utils.launched_by_torchrun():
            raise MochiError("the moco linear protocol runs in one process: start it without torchrun")
        train_tf = linear_lib.moco_train_transform(cfg.image_size)
        test_tf, spec = eval_transform(cfg.image_size, cfg.crop_fraction)
        train_ds = _split(cfg, cfg.train_split, cfg.limit_train, train_tf)
        test_ds = _split(cfg, cfg.test_split, cfg.limit_test, test_tf)
        n_classes = len(train_ds.classes)
        metrics, details = linear_lib.linear_moco(
            backbone, train_ds, test_ds, n_classes, config, seed=seed, device=device, workers=cfg.workers,
            amp=cfg.amp, progress=cfg.progress,
        )  # fmt: skip
        data = {
            "dataset": train_ds.identity().get("name", cfg.data),
            "train": train_ds.identity(),
            "test": test_ds.identity(),
            "num_classes": n_classes,
            "transform": {"train": f"RandomResizedCrop({cfg.image_size}) + flip + imagenet", "test": spec},
        }
    else:
        train, test, data, _ = _features(backbone, cfg)
        if not dist_utils.is_main():
            return None
        if protocol == "sgd-grid":
            config = config or linear_lib.SgdGridConfig()
            fn = linear_lib.linear_sgd_grid
        else:
            config = config or linear_lib.LbfgsConfig()
            fn = linear_lib.linear_lbfgs
        metrics, details = fn(train.features, train.labels, test.features, test.labels, config, seed=seed)
    hyper = {**linear_lib.config_dict(config), "image_size": cfg.image_size}
    if protocol != "moco":
        hyper["preprocessing"] = "standardize (train mean/std)"
    return make_record(
        task="linear",
        protocol=protocol,
        evaluated=backbone.evaluated,
        data=data,
        hyperparameters=hyper,
        metrics={**metrics, **({"val_top1": details["val_top1"]} if "val_top1" in details else {})},
        seed=seed,
        wall_time_s=round(time.perf_counter() - start, 3),
        extra={"details": details},
    )
