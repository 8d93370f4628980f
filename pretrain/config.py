"""Pretraining configuration: every default in one place, with its source.

Defaults are the MoCo-v2 reference (``main_moco.py --mlp --aug-plus --cos --moco-t 0.2``,
docs/protocols.md#moco-v2-pretraining) and MoCHi's options (docs/protocols.md#mochi-hard-negative-mixing).
``validate`` checks every constraint that can be checked before any data is read or any model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mochi.errors import MochiError
from mochi.resnet import ARCHS
from mochi.transforms import AUGMENTATIONS

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
    "mochi_n",
    "mochi_s",
    "mochi_s_prime",
    "mochi_warmup",
    "bn_splits",
    "seed",
    "data",
    "subset",
    "limit",
    "aug",
    "image_size",
)


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
    bn_splits: int | None = None  # None: 8 on a single device (split BN), 1 per rank under DDP (shuffle BN)
    # --- augmentation
    aug: str = "aug-plus"
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
    mochi_n: int = 0
    mochi_s: int = 0
    mochi_s_prime: int = 0
    mochi_warmup: int = 10  # epochs of plain MoCo before mixing starts (reimplementations use 10)
    # --- runtime
    output: str = "runs/pretrain"
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 where supported, else fp16) | bf16 | fp16 | off; GPU only
    channels_last: bool = True  # GPU only
    seed: int = 0
    log_every: int = 20
    save_every: int = 1
    keep_last: int = 0  # 0 keeps every checkpoint
    resume: str | None = None  # "auto" (latest in output, if any) or a checkpoint path
    stop_after: int | None = None  # stop after this many epochs in this invocation (job time limits)

    @property
    def uses_mochi(self) -> bool:
        return self.mochi_n > 0

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
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "lr_steps" in kwargs:
            kwargs["lr_steps"] = tuple(kwargs["lr_steps"])
        return cls(**kwargs)


def validate(cfg: PretrainConfig, world: int) -> None:
    """Raise :class:`MochiError` for any impossible combination of options (``world`` = process count)."""
    if cfg.arch not in ARCHS:
        raise MochiError(f"unknown --arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    if cfg.aug not in AUGMENTATIONS:
        raise MochiError(f"unknown --aug {cfg.aug!r}; choose one of {', '.join(AUGMENTATIONS)}")
    for name in ("epochs", "batch_size", "queue_size", "dim", "image_size", "log_every", "save_every"):
        if getattr(cfg, name) <= 0:
            raise MochiError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise MochiError(f"--moco-m must be in [0, 1), got {cfg.momentum}")
    if cfg.temperature <= 0:
        raise MochiError(f"--moco-t must be positive, got {cfg.temperature}")
    if cfg.batch_size % world != 0:
        raise MochiError(
            f"--batch-size {cfg.batch_size} (global) is not divisible by the {world} processes; "
            f"use a multiple of {world}"
        )
    per_rank = cfg.batch_size // world
    splits = cfg.resolved_bn_splits(world)
    if splits <= 0 or per_rank % splits != 0:
        raise MochiError(
            f"--bn-splits {splits} must divide the per-process batch {per_rank}; "
            "pass --bn-splits with a divisor of it (1 disables split BN)"
        )
    if cfg.queue_size % cfg.batch_size != 0:
        raise MochiError(
            f"queue size K={cfg.queue_size} is not a multiple of the global batch {cfg.batch_size} "
            f"(--batch-size, summed over {world} processes); choose e.g. --moco-k "
            f"{max(1, cfg.queue_size // cfg.batch_size) * cfg.batch_size}"
        )
    if cfg.mochi_n < 0 or cfg.mochi_s < 0 or cfg.mochi_s_prime < 0:
        raise MochiError("--mochi-n, --mochi-s and --mochi-s-prime must be >= 0")
    if cfg.mochi_n == 0 and (cfg.mochi_s or cfg.mochi_s_prime):
        raise MochiError("--mochi-s / --mochi-s-prime need --mochi-n N > 0 (the hard set to mix from)")
    if cfg.mochi_n > cfg.queue_size:
        raise MochiError(
            f"--mochi-n {cfg.mochi_n} exceeds the queue size K={cfg.queue_size}: the hardest N negatives are "
            "taken from the queue, so N must be <= K; lower --mochi-n or raise --moco-k"
        )
    if cfg.mochi_warmup < 0:
        raise MochiError(f"--mochi-warmup must be >= 0, got {cfg.mochi_warmup}")
    if cfg.schedule not in ("cos", "step"):
        raise MochiError(f"unknown --schedule {cfg.schedule!r}; choose cos or step")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise MochiError(f"unknown --device {cfg.device!r}; choose auto, cpu or cuda")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise MochiError(f"unknown --amp {cfg.amp!r}; choose auto, bf16, fp16 or off")
    if cfg.keep_last < 0:
        raise MochiError("--keep-last must be >= 0 (0 keeps every checkpoint)")
    if cfg.stop_after is not None and cfg.stop_after <= 0:
        raise MochiError("--stop-after must be positive")
