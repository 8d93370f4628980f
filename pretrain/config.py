"""Pretraining configuration: every default in one place, with its source.

Defaults are the MoCo-v2 reference (``main_moco.py --mlp --aug-plus --cos --moco-t 0.2``,
docs/protocols.md#moco-v2-pretraining) and MoCHi's options (docs/protocols.md#mochi-hard-negative-mixing).
``validate`` checks every constraint that can be checked before any data is read or any model is built, and
raises :class:`~mochi.errors.ConfigError` naming the field (the CLI names the flag).

This module imports no torch: the command line builds its options from :class:`PretrainConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mochi.constants import ARCHS, AUGMENTATIONS, PRETRAIN_ADDED_FIELDS
from mochi.errors import ConfigError

# Keys that define the model, its optimisation trajectory or its data: a resumed run must match them.
RESUME_MUST_MATCH = (
    "arch",
    "small_stem",
    "dim",
    "mlp",
    "queue_size",
    "momentum",
    "temperature",
    "batch_size",
    "epochs",
    "base_lr",
    "lr",
    "weight_decay",
    "sgd_momentum",
    "schedule",
    "n_hard",
    "s",
    "s_prime",
    "mochi_warmup",
    "oracle",
    "symmetric",
    "bn_splits",
    "seed",
    "data",
    "subset",
    "limit",
    "aug",
    "crop_min",
    "image_size",
)

# Fields renamed since earlier runs wrote their config.json / checkpoints: old name -> field.
RENAMED = {"mochi_n": "n_hard", "mochi_s": "s", "mochi_s_prime": "s_prime"}
SCHEDULES = ("cos", "step")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# Smallest crop: aug+'s Gaussian blur (kernel >= 3, reflect padding 1) needs 2 px.
MIN_IMAGE_SIZE = 2


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config with renamed fields under their current names (``mochi_n`` -> ``n_hard``...) and the
    fields added since (:data:`~mochi.constants.PRETRAIN_ADDED_FIELDS`) at the value the run had."""
    return {**PRETRAIN_ADDED_FIELDS, **{RENAMED.get(k, k): v for k, v in d.items()}}


@dataclass
class PretrainConfig:
    # --- data
    data: str = "fashion-mnist"
    data_root: str | None = None
    subset: str | None = None
    split: str = "train"
    skip_corrupt: bool = False
    limit: int | None = None  # use a fixed random subset of this many images (quick checks)
    workers: int = 4
    # --- model (MoCo-v2 reference)
    arch: str = "resnet50"
    small_stem: bool = False
    dim: int = 128
    mlp: bool = True
    queue_size: int = 65536  # K; a multiple of the global batch
    momentum: float = 0.999  # key-encoder EMA m
    temperature: float = 0.2  # τ (MoCo-v1 used 0.07)
    symmetric: bool = False  # L(q1, k2) + L(q2, k1), both views' keys enqueued (MoCo v3); off: the reference
    bn_splits: int | None = None  # None: 8 on a single device (split BN), 1 per rank under DDP (shuffle BN)
    # --- augmentation
    aug: str = "aug-plus"
    crop_min: float = 0.2  # smallest RandomResizedCrop area share (aug+: 0.2)
    image_size: int = 224
    # --- optimisation (SGD, lr 0.03 per 256 images, momentum 0.9, wd 1e-4 on all params, cosine)
    epochs: int = 200
    batch_size: int = 256  # global, over all processes
    base_lr: float = 0.03  # for a global batch of 256, scaled linearly
    lr: float | None = None  # explicit lr overrides the scaling rule
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cos"  # "cos": lr·0.5·(1+cos(π·epoch/epochs)); "step": ×0.1 at lr_steps
    lr_steps: tuple[int, ...] = (120, 160)
    # --- MoCHi (N, s, s'); N = 0 disables mixing (plain MoCo-v2)
    n_hard: int = 0  # N: hardest queue negatives per query
    s: int = 0  # type-1 mixes of two hard negatives per query
    s_prime: int = 0  # s': type-2 mixes of the query with a hard negative per query
    mochi_warmup: int = 10  # epochs of plain MoCo before mixing starts (reimplementations use 10)
    # --- analysis of the negatives (docs/protocols.md#negatives-during-pretraining)
    oracle: bool = False  # remove same-class queue entries from each query's negatives (labels required)
    analysis: bool = True  # log positive rank, false-negative rates, synthetic-point statistics
    analysis_n: int = 1024  # N hardest for the false-negative rate without MoCHi (clipped to K; MoCHi: its N)
    # --- runtime
    output: str = "runs/pretrain"
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 where supported, else fp16) | bf16 | fp16 | off; GPU only
    channels_last: bool = True  # GPU only
    seed: int = 0
    log_every: int = 20
    save_every: int = 1  # epochs between checkpoints (the last is always saved)
    save_every_steps: int | None = None  # also a mid-epoch checkpoint every N steps (preemptible jobs)
    keep_last: int = 0  # 0 keeps every checkpoint
    resume: str | None = None  # "auto" (latest in output, if any) or a checkpoint path
    stop_after: int | None = None  # stop after this many epochs in this invocation (job time limits)

    @property
    def uses_mochi(self) -> bool:
        return self.n_hard > 0

    def hard_set_size(self) -> int:
        """N of the false-negative rate: MoCHi's N, else ``analysis_n``; at most K."""
        return min(self.n_hard if self.uses_mochi else self.analysis_n, self.queue_size)

    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256

    def resolved_bn_splits(self, world: int) -> int:
        if self.bn_splits is not None:
            return self.bn_splits
        return 1 if world > 1 else 8

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> PretrainConfig:
        """The config saved by :meth:`to_dict`, also under the old field names (:data:`RENAMED`).

        Unknown keys are ignored, or raise :class:`ConfigError` when ``strict``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        d = upgrade(d)
        unknown = sorted(set(d) - names)
        if strict and unknown:
            raise ConfigError(unknown[0], "is not a pretraining option")
        kwargs = {k: v for k, v in d.items() if k in names}
        if "lr_steps" in kwargs:
            kwargs["lr_steps"] = tuple(kwargs["lr_steps"])
        return cls(**kwargs)


def validate(cfg: PretrainConfig, world: int) -> None:
    """Raise :class:`ConfigError` (naming the field) for any impossible value or combination of values.

    ``world`` is the process count.
    """
    if cfg.arch not in ARCHS:
        raise ConfigError("arch", f"{cfg.arch!r} is unknown; choose one of {', '.join(ARCHS)}")
    if cfg.aug not in AUGMENTATIONS:
        raise ConfigError("aug", f"{cfg.aug!r} is unknown; choose one of {', '.join(AUGMENTATIONS)}")
    for name, choices in (("schedule", SCHEDULES), ("device", DEVICES), ("amp", AMP_MODES)):
        if getattr(cfg, name) not in choices:
            raise ConfigError(name, f"{getattr(cfg, name)!r} is unknown; choose one of {', '.join(choices)}")
    for name in (
        "epochs",
        "batch_size",
        "queue_size",
        "dim",
        "log_every",
        "save_every",
        "base_lr",
        "analysis_n",
    ):
        if getattr(cfg, name) <= 0:
            raise ConfigError(name, f"must be positive, got {getattr(cfg, name)}")
    for name in ("lr", "stop_after", "limit", "bn_splits", "save_every_steps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise ConfigError(name, f"must be positive, got {getattr(cfg, name)}")
    for name in ("weight_decay", "sgd_momentum", "workers", "seed", "keep_last", "mochi_warmup"):
        if getattr(cfg, name) < 0:
            raise ConfigError(name, f"must be >= 0, got {getattr(cfg, name)}")
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError("image_size", f"must be at least {MIN_IMAGE_SIZE} pixels, got {cfg.image_size}")
    if not 0.0 < cfg.crop_min <= 1.0:
        raise ConfigError("crop_min", f"must be in (0, 1], got {cfg.crop_min}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise ConfigError("momentum", f"must be in [0, 1), got {cfg.momentum}")
    if cfg.temperature <= 0:
        raise ConfigError("temperature", f"must be positive, got {cfg.temperature}")
    if any(m < 0 for m in cfg.lr_steps):
        raise ConfigError("lr_steps", f"must be epochs >= 0, got {list(cfg.lr_steps)}")
    if cfg.batch_size % world != 0:
        raise ConfigError(
            "batch_size",
            f"{cfg.batch_size} (global) is not divisible by the {world} processes; use a multiple of {world}",
        )
    per_rank = cfg.batch_size // world
    splits = cfg.resolved_bn_splits(world)
    if per_rank % splits != 0:
        raise ConfigError(
            "bn_splits",
            f"{splits} must divide the per-process batch {per_rank}; "
            "pass a divisor of it (1 disables split BN)",
        )
    if cfg.queue_size % cfg.batch_size != 0:
        raise ConfigError(
            "queue_size",
            f"{cfg.queue_size} is not a multiple of the global batch {cfg.batch_size} "
            f"(`batch_size`, summed over {world} processes), as the queue size K must be; choose e.g. "
            f"{max(1, cfg.queue_size // cfg.batch_size) * cfg.batch_size}",
        )
    for name in ("n_hard", "s", "s_prime"):
        if getattr(cfg, name) < 0:
            raise ConfigError(name, f"must be >= 0, got {getattr(cfg, name)}")
    for name in ("s", "s_prime"):
        if cfg.n_hard == 0 and getattr(cfg, name):
            raise ConfigError(name, "needs `n_hard` N > 0 (the hard set to mix from)")
    if cfg.n_hard > cfg.queue_size:
        raise ConfigError(
            "n_hard",
            f"{cfg.n_hard} exceeds the queue size K={cfg.queue_size}: the hardest N negatives are taken "
            "from the queue, so N must be <= K; lower it or raise `queue_size`",
        )
