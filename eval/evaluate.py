"""Evaluations end to end: backbone + data -> (cached) features -> protocol -> result records.

The runner contract every evaluation follows (kNN, linear, detection): a library function that takes its
config dataclasses and returns a list of records (see :mod:`mochi.eval.records`) without writing them;
the caller writes them with :func:`mochi.eval.records.write_records` once everything has succeeded, so a
failed run leaves no record behind. Under ``torchrun`` the feature pass is sharded over ranks and only
rank 0 computes metrics (other ranks get an empty list). A runner changes no global state: random
generators are local or restored (:func:`mochi.eval.linear.torch_seeded`), and the backbone is not modified.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mochi import distributed as dist_utils
from mochi.errors import MochiError
from mochi.transforms import eval_transform

from . import knn as knn_lib
from . import linear as linear_lib
from .backbones import EvalBackbone
from .config import BackboneSpec, EvalData, check_backbone, check_data, check_knn, check_linear
from .data import open_split
from .features import FeatureCache, Features, get_features
from .knn import KnnConfig
from .records import make_record


def _split(cfg: EvalData, split: str, limit: int | None, transform):
    return open_split(
        cfg.data, split, root=cfg.data_root, subset=cfg.subset, transform=transform, limit=limit
    )


def _open_splits(cfg: EvalData, transform) -> tuple[Any, Any]:
    """Both splits, opened (and so checked: files, classes, limits) before any feature is extracted."""
    train = _split(cfg, cfg.train_split, cfg.limit_train, transform)
    test = _split(cfg, cfg.test_split, cfg.limit_test, transform)
    if len(train.classes) != len(test.classes):
        raise MochiError(
            f"the {cfg.train_split!r} split has {len(train.classes)} classes but {cfg.test_split!r} has "
            f"{len(test.classes)}: both splits must share one class list (check the folders or --subset)"
        )
    return train, test


def _features(backbone: EvalBackbone, cfg: EvalData, check=None) -> tuple[Features, Features, dict, dict]:
    """Features of both splits. ``check(train_dataset)`` runs once both splits are open, before any
    feature is extracted: a protocol's checks against the data (e.g. k against the training-set size)."""
    device = dist_utils.resolve_device(cfg.device)
    dist_utils.init_from_env(device.type)
    transform, spec = eval_transform(cfg.image_size, cfg.crop_fraction)
    cache = None if cfg.no_cache else FeatureCache(cfg.cache_dir, verify=cfg.verify_cache)
    splits = _open_splits(cfg, transform)
    if check is not None:
        check(splits[0])
    out = []
    for ds in splits:
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


def _check(backbone: EvalBackbone | BackboneSpec, cfg: EvalData) -> None:
    """Impossible values are reported before any checkpoint or image is read."""
    if isinstance(backbone, BackboneSpec):
        check_backbone(backbone)
    check_data(cfg)


def _backbone(backbone: EvalBackbone | BackboneSpec) -> EvalBackbone:
    return backbone.load() if isinstance(backbone, BackboneSpec) else backbone


def evaluate_knn(
    backbone: EvalBackbone | BackboneSpec, cfg: EvalData, config: KnnConfig | None = None
) -> list[dict[str, Any]]:
    """One kNN record: ``metrics`` = headline ``top1/top5/mean_per_class`` (k=20, T=0.07 when requested) +
    ``headline`` (its setting name) + ``settings`` (``{"k20_T0.07": {...}, ...}`` for every pair)."""
    config = config or KnnConfig()
    _check(backbone, cfg)
    check_knn(config)
    ks, temperatures = tuple(config.ks), tuple(config.temperatures)
    backend, search_device = knn_lib.search_plan(config.backend, cfg.device)
    backbone = _backbone(backbone)
    start = time.perf_counter()

    def check(train_ds) -> None:
        nonlocal ks
        ks = knn_lib.usable_ks(ks, len(train_ds), default=tuple(config.ks) == knn_lib.DEFAULT_KS)
        knn_lib.check_settings(
            ks, temperatures, len(train_ds), len(set(np.asarray(train_ds.targets).tolist()))
        )

    train, test, data, info = _features(backbone, cfg, check)
    if not dist_utils.is_main():
        return []
    search_start = time.perf_counter()
    metrics = knn_lib.knn_classify(
        train.features, train.labels, test.features, test.labels, ks=ks, temperatures=temperatures,
        backend=backend, device=search_device, n_classes=info["n_classes"],
    )  # fmt: skip
    hyper = {
        "k": sorted(set(ks)),
        "T": list(temperatures),
        "backend": backend,
        "search_device": search_device,
        "weighting": "exp(s/T)",
        "normalize": "l2",
        "image_size": cfg.image_size,
    }
    record = make_record(
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
    return [record]


def evaluate_linear(
    backbone: EvalBackbone | BackboneSpec, cfg: EvalData, config: linear_lib.LinearConfig
) -> list[dict[str, Any]]:
    """One linear record for ``config``'s protocol (``moco`` / ``sgd-grid`` / ``lbfgs``: the config
    dataclass names it, and carries the seed). ``metrics``: test ``top1/top5/mean_per_class`` plus the
    protocol's choices (best lr / C, held-out accuracy)."""
    _check(backbone, cfg)
    check_linear(config)
    protocol = config.protocol
    seed = config.seed
    if protocol == "moco" and dist_utils.launched_by_torchrun():
        raise MochiError("the moco linear protocol runs in one process: start it without torchrun")
    backbone = _backbone(backbone)
    if protocol == "moco" and backbone.evaluated.get("pixels"):
        raise MochiError(
            "the moco linear protocol trains a ResNet's fc on augmented images; raw pixels have none: "
            "use --protocol lbfgs or sgd-grid with --pixels"
        )
    start = time.perf_counter()
    with linear_lib.torch_seeded(seed):
        if protocol == "moco":
            device = dist_utils.resolve_device(cfg.device)
            train_tf = linear_lib.moco_train_transform(cfg.image_size)
            test_tf, spec = eval_transform(cfg.image_size, cfg.crop_fraction)
            train_ds = _split(cfg, cfg.train_split, cfg.limit_train, train_tf)
            test_ds = _split(cfg, cfg.test_split, cfg.limit_test, test_tf)
            n_classes = len(train_ds.classes)
            metrics, details = linear_lib.linear_moco(
                backbone, train_ds, test_ds, n_classes, config, seed=seed, device=device,
                workers=cfg.workers, amp=cfg.amp, progress=cfg.progress,
            )  # fmt: skip
            data = {
                "dataset": train_ds.identity().get("name", cfg.data),
                "train": train_ds.identity(),
                "test": test_ds.identity(),
                "num_classes": n_classes,
                "transform": {
                    "train": f"RandomResizedCrop({cfg.image_size}) + flip + imagenet",
                    "test": spec,
                },
            }
        else:
            train, test, data, _ = _features(backbone, cfg)
            if not dist_utils.is_main():
                return []
            fn = linear_lib.linear_sgd_grid if protocol == "sgd-grid" else linear_lib.linear_lbfgs
            metrics, details = fn(train.features, train.labels, test.features, test.labels, config, seed=seed)
    hyper = {**linear_lib.config_dict(config), "image_size": cfg.image_size}
    if protocol != "moco":
        hyper["preprocessing"] = "standardize (train mean/std)"
    record = make_record(
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
    return [record]
