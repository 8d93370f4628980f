"""Writing and reading pretraining checkpoints, atomically, in the layout of :mod:`mochi.layout`.

``epoch`` is the next epoch to run (the 0-based index of the finished epoch + 1), as ``main_moco.py`` writes
it; the key prefixes, the metadata block and its format version are defined once in :mod:`mochi.layout`.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mochi import layout
from mochi.errors import MochiError
from mochi.io import atomic_torch_save
from mochi.layout import checkpoint_name, is_mid_epoch, list_checkpoints
from mochi.versions import library_versions


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """All RNG states as weights_only-loadable values (a record of the run; resuming re-seeds per epoch)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def build_checkpoint(
    *,
    epoch_index: int,
    step: int = 0,
    partial: dict[str, Any] | None = None,
    arch: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    scaler_state: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict after finishing 0-based epoch ``epoch_index`` (model unwrapped from DDP), or,
    with ``step`` > 0, after ``step`` steps of it (``partial``: that epoch's metric sums so far)."""
    state_dict = {f"{layout.MODULE_PREFIX}{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "epoch": epoch_index if step else epoch_index + 1,
        "arch": arch,
        layout.STATE_DICT_KEY: state_dict,
        "optimizer": optimizer.state_dict(),
        layout.META_KEY: {
            "format_version": layout.FORMAT_VERSION,
            "config": config,
            "queue_ptr": int(model.queue_ptr.item()),
            "rng": rng_state(generator),
            "scaler": scaler_state,
            "versions": library_versions(),
            "metrics": metrics or {},
            "step": step,
            **({"partial": partial} if step else {}),
        },
    }


def checkpoint_step(ckpt: dict[str, Any]) -> int:
    """Steps done in epoch ``ckpt["epoch"]`` (0 for an end-of-epoch checkpoint, or one of another tool)."""
    meta = ckpt.get(layout.META_KEY)
    return int(meta.get("step", 0)) if isinstance(meta, dict) else 0


def save_checkpoint(ckpt: dict[str, Any], run_dir: str | Path, keep_last: int = 0) -> Path:
    """Write ``ckpt`` atomically as ``checkpoint_{epoch:04d}.pth.tar`` (or ``..._step{step:06d}`` mid-epoch).

    Then prune: mid-epoch checkpoints older than this one are removed (they only serve to resume, and
    this one is newer); with ``keep_last`` > 0 only the newest ``keep_last`` end-of-epoch ones are kept.
    The file just written is never removed.
    """
    step = checkpoint_step(ckpt)
    path = Path(run_dir) / (
        checkpoint_name(ckpt["epoch"], step) if step else checkpoint_name(ckpt["epoch"] - 1)
    )
    atomic_torch_save(ckpt, path)
    listed = list_checkpoints(run_dir)
    older = listed[: listed.index(path)] if path in listed else []
    for old in older:
        if is_mid_epoch(old):
            old.unlink(missing_ok=True)
    if keep_last > 0:
        for old in list_checkpoints(run_dir, mid_epoch=False)[:-keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def _blocked_global(err: BaseException) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else "a global outside torch's allow-list"


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0][:200] if lines else "no message"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoints safely (``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise MochiError(f"checkpoint not found: {path}; pass an existing file or --resume auto")
    if path.stat().st_size == 0:
        raise MochiError(
            f"checkpoint {path} is empty (0 bytes): the save was interrupted; resume from an earlier one"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused a global: the file holds objects, not data
        raise MochiError(
            f"refusing to load {path}: it references {_blocked_global(err)}, a Python object that could run "
            "code when unpickled; mochi and MoCo pretraining checkpoints hold only tensors and plain values. "
            "Check that this is the right file"
        ) from None
    except Exception as err:  # truncated zip, wrong format...
        raise MochiError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {_first_line(err)}. "
            "The file is truncated, corrupt or not a mochi/MoCo checkpoint; resume from an earlier one"
        ) from None
    if not isinstance(ckpt, dict) or not set(layout.REQUIRED_KEYS) <= set(ckpt):
        raise MochiError(
            f"{path} is not a MoCo/mochi pretraining checkpoint (needs epoch, state_dict and optimizer)"
        )
    return ckpt
