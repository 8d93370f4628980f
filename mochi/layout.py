"""The checkpoint layout pretraining writes and the readers recognise: one place for its names.

A pretraining checkpoint ``checkpoint_{epoch:04d}.pth.tar`` is the reference MoCo layout (``main_moco.py``)
plus our metadata; a mid-epoch checkpoint (``--save-every-steps``, or a stop signal)
``checkpoint_{epoch:04d}_step{step:06d}.pth.tar`` is the same layout written ``step`` steps into the 0-based
epoch ``epoch`` (its ``epoch`` key, epochs done, equals that index)::

    {
      "epoch": int,                # epochs done (the next epoch to run)
      "arch": "resnet50",
      "state_dict": {"module.encoder_q.*", "module.encoder_k.*", "module.queue", "module.queue_ptr"},
      "optimizer": {...},
      "mochi": {"format_version": 1, "config": {...}, "queue_ptr": int, "rng": {...},
                "scaler": {...} | None, "versions": {...}, "metrics": {...},
                "step": int,            # steps done in epoch `epoch` (0: an end-of-epoch checkpoint)
                "partial": {...}},      # mid-epoch only: the epoch's metric sums so far
    }

Everything in it loads with ``torch.load(..., weights_only=True)``. A reader knows a file is ours by the
``mochi`` block and its ``format_version``, not by guessing from key names; :func:`mochi_format_version`
says which version a loaded object is, and refuses one written by a newer mochi.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mochi.errors import MochiError

FORMAT_VERSION = 1  # bump when the layout changes; readers accept every version up to this one
META_KEY = "mochi"
STATE_DICT_KEY = "state_dict"
MODULE_PREFIX = "module."  # the reference saves the DDP-wrapped model
QUERY_PREFIX = "module.encoder_q."
KEY_PREFIX = "module.encoder_k."
QUEUE_KEY = "module.queue"
QUEUE_PTR_KEY = "module.queue_ptr"
REQUIRED_KEYS = ("epoch", STATE_DICT_KEY, "optimizer")

_NAME = re.compile(r"^checkpoint_(\d{4,})(?:_step(\d{6,}))?\.pth\.tar$")


def checkpoint_name(epoch_index: int, step: int | None = None) -> str:
    """File name of the checkpoint written after 0-based epoch ``epoch_index``, or ``step`` steps into it."""
    if step is None:
        return f"checkpoint_{epoch_index:04d}.pth.tar"
    return f"checkpoint_{epoch_index:04d}_step{step:06d}.pth.tar"


def is_mid_epoch(path: str | Path) -> bool:
    """Whether ``path`` names a mid-epoch checkpoint (``checkpoint_{epoch:04d}_step{step:06d}.pth.tar``)."""
    m = _NAME.match(Path(path).name)
    return bool(m and m.group(2))


def list_checkpoints(run_dir: str | Path, mid_epoch: bool = True) -> list[Path]:
    """Checkpoints in ``run_dir`` in training order, oldest first: a mid-epoch checkpoint of epoch E comes
    after the end of epoch E-1 and before the end of epoch E. ``mid_epoch=False`` lists epoch ends only."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        if (m := _NAME.match(p.name)) and (mid_epoch or m.group(2) is None):
            step = float("inf") if m.group(2) is None else int(m.group(2))
            found.append(((int(m.group(1)), step), p))
    return [p for _, p in sorted(found)]


def mochi_format_version(obj: Any) -> int | None:
    """The layout version of a loaded mochi pretraining checkpoint, or None if ``obj`` is not one.

    Raises :class:`MochiError` for a mochi checkpoint written in a newer layout than this version reads.
    """
    if not isinstance(obj, Mapping) or not isinstance(obj.get(META_KEY), Mapping):
        return None
    version = obj[META_KEY].get("format_version")
    state = obj.get(STATE_DICT_KEY)
    if not isinstance(version, int) or not isinstance(state, Mapping):
        return None
    if not any(isinstance(k, str) and k.startswith(QUERY_PREFIX) for k in state):
        return None
    if version > FORMAT_VERSION:
        raise MochiError(
            f"this checkpoint was written by a newer mochi (layout version {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade mochi-ssl to read it"
        )
    return version


def declared_config(obj: Any) -> Mapping[str, Any]:
    """The pretraining config saved in a mochi checkpoint (empty for any other file)."""
    if mochi_format_version(obj) is None:
        return {}
    config = obj[META_KEY].get("config")
    return config if isinstance(config, Mapping) else {}
