"""Detectron2 configs for the transfer protocols: shipped names or yaml paths, BN choice, one seed's cfg.

:func:`build_config` composes one seed's cfg in a fixed order: Detectron2's defaults → the shipped (or
given) yaml → ``KEY VALUE`` overrides → the norm choice (:func:`choose_norm`) → data → run keys (weights,
device, output directory, seed). :func:`hyperparameters` lists the cfg values that define a protocol,
for the records.

Nothing here imports Detectron2 on import; :func:`load_config` (and so :func:`build_config`) needs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mochi.constants import NORM_CHOICES
from mochi.errors import ConfigError, MochiError

from .install import require_detectron2

if TYPE_CHECKING:
    from .datasets import DatasetSpec

#: Config keys whose value is a norm type, rewritten together by :func:`choose_norm`.
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")
SYNC_NORMS = ("SyncBN", "naiveSyncBN")

#: The cfg values that define a protocol (and can change a number): what a record's hyperparameters hold.
PROTOCOL_KEYS = (
    "MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.DEPTH",
    "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.ROI_HEADS.NAME", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.MASK_ON",
    "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT", "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN",
    "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "SOLVER.MAX_ITER", "SOLVER.BASE_LR",
    "SOLVER.IMS_PER_BATCH", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS", "SOLVER.WEIGHT_DECAY",
    "SOLVER.MOMENTUM", "TEST.PRECISE_BN.ENABLED", *NORM_KEYS,
)  # fmt: skip

#: torchvision architecture → ``MODEL.RESNETS.DEPTH`` of the Detectron2 ResNet that holds its weights.
DEPTHS = {"resnet50": 50, "resnet101": 101, "resnet152": 152}


def resolve_config(config: str) -> Path:
    """A shipped config name (``voc07_R50_C4_24k``) or a path to a yaml file."""
    from mochi.detectron_configs import config_names, config_path

    path = Path(config)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = config_path(config)
    if shipped.is_file() and not shipped.stem.startswith("Base-"):
        return shipped
    raise ConfigError(
        "config", f"config {config!r}: neither a shipped config ({', '.join(config_names())}) nor a yaml file"
    )


def choose_norm(norms: Mapping[str, str], world_size: int, norm: str = "auto") -> dict[str, str]:
    """The norm type for each of ``norms`` (config key → value) in a run of ``world_size`` processes.

    ``auto``: synchronised BN (``SyncBN``, ``naiveSyncBN``) becomes ``BN`` when there is one process
    (it needs a process group and would only compute plain BN anyway); anything else is kept.
    ``config``: keep the config's values. ``BN`` / ``SyncBN`` / ``naiveSyncBN``: force that type on every
    key that is normalised (a key set to ``""`` — no norm — stays unnormalised).
    """
    if norm not in NORM_CHOICES:
        raise ConfigError("norm", f"norm {norm!r}: choose one of {', '.join(NORM_CHOICES)}")
    out = {}
    for key, value in norms.items():
        if norm == "config" or not value:
            out[key] = value
        elif norm == "auto":
            out[key] = "BN" if value in SYNC_NORMS and world_size <= 1 else value
        else:
            out[key] = norm
    return out


def load_config(config: str):
    """``get_cfg()`` merged with ``config`` (shipped name or path); the ExtraNorm head is registered."""
    require_detectron2()
    from detectron2.config import get_cfg

    from . import head  # noqa: F401 - registers Res5ROIHeadsExtraNorm

    cfg = get_cfg()
    cfg.merge_from_file(str(resolve_config(config)))
    return cfg


def cfg_get(cfg, key: str):
    """``cfg`` value at a dotted ``key`` (``MODEL.RESNETS.NORM``)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def cfg_set(cfg, key: str, value) -> None:
    """Set the ``cfg`` value at a dotted ``key``."""
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def build_config(
    config: str,
    *,
    weights: str | Path,
    output_dir: str | Path,
    seed: int,
    world_size: int,
    device: str,
    norm: str = "auto",
    train: Sequence[DatasetSpec] = (),
    test: Sequence[DatasetSpec] = (),
    overrides: Sequence[str] = (),
):
    """The cfg of one seed: shipped config → ``KEY VALUE`` overrides → norm choice → data → run keys."""
    cfg = load_config(config)
    if len(overrides) % 2:
        raise ConfigError(
            "overrides", f"overrides must be KEY VALUE pairs; got an odd number: {' '.join(overrides)}"
        )
    try:
        cfg.merge_from_list(list(overrides))
    except (KeyError, AssertionError, ValueError) as err:
        raise ConfigError("overrides", f"overrides: bad override in {' '.join(overrides)}: {err}") from None
    for key, value in choose_norm({k: cfg_get(cfg, k) for k in NORM_KEYS}, world_size, norm).items():
        cfg_set(cfg, key, value)
    if train:
        cfg.DATASETS.TRAIN = tuple(d.name for d in train)
    if test:
        cfg.DATASETS.TEST = tuple(d.name for d in test)
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = device
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = int(seed)
    return cfg


def check_depth(cfg, arch: str | None, checkpoint: str) -> None:
    """A clear error when ``cfg`` builds a ResNet of another depth than the ``arch`` of ``checkpoint``."""
    expected = DEPTHS.get(arch or "")
    if expected != cfg.MODEL.RESNETS.DEPTH:
        raise MochiError(
            f"{checkpoint} holds a {arch} but the config builds a ResNet-{cfg.MODEL.RESNETS.DEPTH}"
            + (f": add MODEL.RESNETS.DEPTH {expected}" if expected else "")
        )


def hyperparameters(cfg, *, norm: str, world_size: int, overrides: Sequence[str]) -> dict[str, Any]:
    """The cfg values that define the protocol (:data:`PROTOCOL_KEYS`), the norm choice, world size and
    overrides: a record's ``hyperparameters``."""
    out: dict[str, Any] = {}
    for key in PROTOCOL_KEYS:
        value = cfg_get(cfg, key)
        out[key] = list(value) if isinstance(value, (list, tuple)) else value
    out["norm_choice"] = norm
    out["world_size"] = world_size
    out["overrides"] = list(overrides)
    return out
