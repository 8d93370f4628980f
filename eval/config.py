"""What an evaluation is asked to do: the config dataclasses of every frozen protocol and their checks.

One place for the defaults of the backbone choice (:class:`BackboneSpec`), the data and feature pass
(:class:`EvalData`), kNN (:class:`KnnConfig`), the three linear protocols and the alignment / uniformity
analysis (:class:`AnalysisConfig`). The
``check_*`` functions reject impossible values before any data is read, raising
:class:`~mochi.errors.ConfigError` with the field's name (the CLI names the flag).

This module imports no torch or numpy: the command line builds its options from these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from mochi.constants import ARCHS, AUGMENTATIONS, ENCODERS
from mochi.errors import ConfigError

if TYPE_CHECKING:
    from .backbones import EvalBackbone

DEVICES = ("auto", "cpu", "cuda")
FEATURE_DTYPES = ("float16", "float32")
# Smallest center crop: a 1 px image is a single colour.
MIN_IMAGE_SIZE = 2


@dataclass
class BackboneSpec:
    """Which backbone to evaluate: a checkpoint (any format :mod:`mochi.transfer` reads) or random init.

    ``checkpoint`` xor ``random_init`` xor ``pixels`` (the raw-pixel baseline: the evaluation transform's
    output flattened, no network); ``arch`` names what to build for random init (with a checkpoint it
    asserts the inferred architecture); ``small_stem`` / ``init_seed`` apply to random init; ``encoder`` /
    ``prefix`` pick the network inside a multi-encoder checkpoint; ``stem`` a 3×3 conv1's stem;
    ``trust_checkpoint`` allows arbitrary unpickling (trusted files only).
    """

    checkpoint: str | None = None
    random_init: bool = False
    pixels: bool = False
    arch: str | None = None
    small_stem: bool = False
    init_seed: int = 0
    encoder: str | None = None
    prefix: str | None = None
    stem: str | None = None
    trust_checkpoint: bool = False

    def load(self) -> EvalBackbone:
        from .backbones import load_eval_backbone

        return load_eval_backbone(
            self.checkpoint, random_init=self.random_init, pixels=self.pixels, arch=self.arch,
            small_stem=self.small_stem, seed=self.init_seed, encoder=self.encoder, prefix=self.prefix,
            stem=self.stem,
            trust_checkpoint=self.trust_checkpoint,
        )  # fmt: skip


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
    verify_cache: bool = False  # full checksum of cached features on every hit (size + time otherwise)


# kNN defaults (DINO ``eval_knn.py``): k = 10, 20, 100, 200; T = 0.07. The headline is k = 20, T = 0.07.
DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURES = (0.07,)
HEADLINE = (20, 0.07)
BACKENDS = ("faiss", "torch")


@dataclass
class KnnConfig:
    """The kNN protocol's settings: every ``k`` and ``T`` is scored from one search for ``max(k)``."""

    ks: tuple[int, ...] = DEFAULT_KS
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    backend: str = "faiss"  # "faiss" (exact inner product) or "torch"; faiss falls back to torch if absent


PROTOCOLS = ("moco", "sgd-grid", "lbfgs")


@dataclass
class MocoLinearConfig:
    """Reference ``main_lincls.py`` defaults [C]; ``seed`` seeds the head's init and the data order."""

    protocol: ClassVar[str] = "moco"
    epochs: int = 100
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    lr_steps: tuple[int, ...] = (60, 80)
    fc_init_std: float = 0.01
    seed: int = 0


@dataclass
class SgdGridConfig:
    """Heads trained together on cached features; lr per 256 images (linear scaling with the batch).

    ``seed`` seeds the held-out split, the heads' init and the data order.
    """

    protocol: ClassVar[str] = "sgd-grid"
    lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    weight_decays: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)
    epochs: int = 30
    batch_size: int = 256
    momentum: float = 0.9
    val_fraction: float = 0.2
    seed: int = 0


def log_c_values() -> tuple[float, ...]:
    """C = 10^linspace(-6, 5, 45) [ssl-transfer], to 12 significant digits: the same grid, in every record,
    whatever NumPy's version (whose ``logspace`` differs in the last bit between releases)."""
    import numpy as np  # here, so that importing this module stays cheap

    return tuple(float(f"{c:.12g}") for c in np.logspace(-6, 5, 45).tolist())


@dataclass
class LbfgsConfig:
    """C = 10^linspace(-6, 5, 45) [ssl-transfer]; ``max_iter`` bounds each fit.

    ``patience``: the sweep (increasing C) stops once held-out accuracy has not improved for this many
    values in a row, counted only after it has risen above the first value's (the flat start at tiny C,
    where one class is predicted for every image, never stops it). The default 0 sweeps all 45 values, as
    the protocol; a small patience (e.g. 5) is a documented shortcut: large C values are the slow fits and,
    past the optimum, only overfit.

    ``blas_threads``: BLAS threads for the fits; 0 (auto) picks :func:`mochi.eval.linear.auto_blas_threads`.
    ``seed``: the held-out split.
    """

    protocol: ClassVar[str] = "lbfgs"
    c_values: tuple[float, ...] = field(default_factory=log_c_values)
    max_iter: int = 1000
    val_fraction: float = 0.2
    patience: int = 0
    blas_threads: int = 0
    seed: int = 0


LinearConfig = MocoLinearConfig | SgdGridConfig | LbfgsConfig
CONFIGS: dict[str, type] = {c.protocol: c for c in (MocoLinearConfig, SgdGridConfig, LbfgsConfig)}


# Alignment and uniformity (Wang & Isola 2020, docs/protocols.md#alignment-and-uniformity): alpha = 2, t = 2.
@dataclass
class AnalysisConfig:
    """``mochi analyze``: alignment and uniformity on a fixed seeded subset of a split, two views per image.

    ``aug`` / ``image_size``: None takes the pretraining values from a mochi checkpoint's saved config, else
    ``aug-plus`` at 224 px. ``seed`` picks the subset and seeds the augmentation, so every checkpoint sees
    the same images and the same two views.
    """

    split: str = "train"
    limit: int = 2048
    seed: int = 0
    alpha: float = 2.0
    t: float = 2.0
    aug: str | None = None
    image_size: int | None = None
    batch_size: int = 256
    device: str = "auto"


# ---------------------------------------------------------------------------------------------------------
# Checks: impossible values, by field


def _check(cfg: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Every named field (or every value of a tuple field; None = unset, skipped) positive / >= 0."""
    names = {f.name for f in fields(cfg)}
    for group, ok, words in (
        (positive, lambda v: v > 0, "positive"),
        (non_negative, lambda v: v >= 0, ">= 0"),
    ):
        for name in group:
            if name not in names:
                continue
            value = getattr(cfg, name)
            if isinstance(value, tuple):
                if not value:
                    raise ConfigError(name, "needs at least one value")
                if not all(ok(v) for v in value):
                    raise ConfigError(name, f"needs every value {words}, got {', '.join(map(str, value))}")
            elif value is not None and not ok(value):
                raise ConfigError(name, f"must be {words}, got {value}")


def _choice(cfg: Any, name: str, choices) -> None:
    value = getattr(cfg, name)
    if value is not None and value not in choices:
        raise ConfigError(name, f"{value!r} is unknown; choose one of {', '.join(choices)}")


def check_backbone(spec: BackboneSpec) -> None:
    _choice(spec, "arch", ARCHS)
    _choice(spec, "encoder", ENCODERS)
    _check(spec, non_negative=("init_seed",))


def check_data(cfg: EvalData) -> None:
    _check(cfg, positive=("limit_train", "limit_test", "batch_size"), non_negative=("workers",))
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError("image_size", f"must be at least {MIN_IMAGE_SIZE} pixels, got {cfg.image_size}")
    if cfg.crop_fraction is not None and not 0 < cfg.crop_fraction <= 1:
        raise ConfigError("crop_fraction", f"must be in (0, 1], got {cfg.crop_fraction}")
    _choice(cfg, "device", DEVICES)
    _choice(cfg, "dtype", FEATURE_DTYPES)


def check_knn(cfg: KnnConfig) -> None:
    _check(cfg, positive=("ks", "temperatures"))
    _choice(cfg, "backend", BACKENDS)


def check_linear(cfg: LinearConfig) -> None:
    protocol = getattr(cfg, "protocol", None)
    if protocol not in CONFIGS or not isinstance(cfg, CONFIGS[protocol]):
        raise ConfigError(
            "protocol",
            f"not a linear protocol config: {type(cfg).__name__}; use one of "
            + ", ".join(c.__name__ for c in CONFIGS.values()),
        )
    _check(
        cfg,
        positive=("epochs", "lr", "lrs", "batch_size", "fc_init_std", "c_values", "max_iter"),
        non_negative=(
            "momentum",
            "weight_decay",
            "weight_decays",
            "lr_steps",
            "patience",
            "blas_threads",
            "seed",
        ),
    )
    if hasattr(cfg, "val_fraction") and not 0 < cfg.val_fraction < 1:
        raise ConfigError("val_fraction", f"must be in (0, 1), got {cfg.val_fraction}")


def check_analysis(cfg: AnalysisConfig) -> None:
    _check(cfg, positive=("alpha", "t", "batch_size"), non_negative=("seed",))
    if cfg.limit < 2:  # uniformity is a mean over pairs
        raise ConfigError("limit", f"must be at least 2 images, got {cfg.limit}")
    if cfg.image_size is not None and cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError("image_size", f"must be at least {MIN_IMAGE_SIZE} pixels, got {cfg.image_size}")
    _choice(cfg, "aug", AUGMENTATIONS)
    _choice(cfg, "device", DEVICES)
