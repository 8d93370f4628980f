"""A pretraining run's directory: who may write it, what to resume, the metrics log.

A run directory belongs to one run (``config.json``, ``metrics.jsonl``, TensorBoard events, checkpoints in
the :mod:`mochi.layout` layout): it is written when empty, or when it holds the run being resumed, never
otherwise. Resuming checks the checkpoint (options, architecture, tensor shapes) before any data is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from mochi.errors import MochiError
from mochi.io import atomic_write_text, read_jsonl
from mochi.layout import list_checkpoints
from mochi.pretrain.config import RESUME_MUST_MATCH, PretrainConfig, upgrade

log = logging.getLogger("mochi.pretrain")

_RUN_FILES = ("config.json", "metrics.jsonl")


def prepare_run_dir(cfg: PretrainConfig) -> tuple[Path, Path | None]:
    """Decide where to write and what to resume from, refusing to clobber or mix runs.

    A run directory belongs to one run: it is written only when it is empty (new run), when it holds the
    run being resumed (``--resume auto``, or ``--resume PATH`` with PATH inside it), never otherwise.
    """
    run_dir = Path(cfg.output)
    existing = list_checkpoints(run_dir)
    leftovers = [name for name in _RUN_FILES if (run_dir / name).exists()]
    if not existing and leftovers and (cfg.resume is None or cfg.resume == "auto"):
        raise MochiError(
            f"{run_dir} holds {' and '.join(leftovers)} of an earlier run but no checkpoint: nothing to "
            "resume, and starting over would overwrite them. Choose another --output, or delete that "
            "folder to start again"
        )
    if cfg.resume is None:
        if existing:
            raise MochiError(
                f"{run_dir} already holds checkpoints ({existing[-1].name}); pass --resume auto to continue "
                "that run, or choose another --output"
            )
        return run_dir, None
    if cfg.resume == "auto":
        return run_dir, (existing[-1] if existing else None)
    resume = Path(cfg.resume)
    other = existing or leftovers
    if other and resume.resolve().parent != run_dir.resolve():
        raise MochiError(
            f"--resume {resume} belongs to the run in {resume.parent}, but --output {run_dir} holds another "
            f"run ({(existing[-1].name if existing else leftovers[0])}): resuming would mix the two. Pass "
            f"--output {resume.parent} to continue that run, or an empty --output to branch off it"
        )
    return run_dir, resume


def check_resume_arch(ckpt: dict[str, Any], cfg: PretrainConfig, path: Path) -> None:
    saved = ckpt.get("arch")
    if isinstance(saved, str) and saved != cfg.arch:
        raise MochiError(
            f"cannot resume from {path}: it holds a {saved} but this run builds a {cfg.arch}; pass "
            f"--arch {saved} (and the run's other options) to continue it"
        )


def check_resume_state(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """One clear line instead of torch's list of every mismatched tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {len(keys)} (e.g. {keys[0]})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes))
            if keys
        ]
        raise MochiError(
            f"cannot resume from {path}: its tensors do not fit this model ({'; '.join(parts)}). Resume with "
            "the options of the run that wrote it (architecture, --small-stem, --moco-dim, --mlp, --moco-k)"
        )


def remove_orphan_temporaries(run_dir: Path) -> None:
    """Half-written files of a process killed while saving (``.<name>.<random>.tmp``): never complete,
    never read, removed when the run starts again."""
    for pattern in (".checkpoint_*.pth.tar.*.tmp", ".config.json.*.tmp", ".metrics.jsonl.*.tmp"):
        for orphan in run_dir.glob(pattern):
            log.info("removing %s, left by an interrupted save", orphan.name)
            orphan.unlink(missing_ok=True)


def check_resume_config(saved: dict[str, Any], cfg: PretrainConfig, path: Path) -> None:
    saved = upgrade(saved)  # checkpoints written before a field was renamed
    diff = [k for k in RESUME_MUST_MATCH if k in saved and saved[k] != cfg.to_dict()[k]]
    if diff:
        details = ", ".join(f"{k}: {saved[k]!r} -> {cfg.to_dict()[k]!r}" for k in diff)
        raise MochiError(
            f"cannot resume from {path}: options differ from the saved run ({details}); "
            "resume with the original options or start a new --output"
        )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``: :func:`mochi.io.read_jsonl` (a torn last line is dropped)."""
    return read_jsonl(path)


def _before(record: dict[str, Any], epoch: int, step: int) -> bool:
    """Whether a metrics record was written before ``step`` steps into ``epoch`` were done."""
    if record.get("epoch", 0) != epoch:
        return record.get("epoch", 0) < epoch
    return record.get("type") == "step" and record.get("step", 0) <= step


class MetricsLogger:
    """metrics.jsonl (one JSON object per line) plus TensorBoard scalars when tensorboard is installed."""

    def __init__(
        self, run_dir: Path, start_epoch: int, enabled: bool, first_step: int = 0, start_step: int = 0
    ) -> None:
        """Resuming at ``start_step`` steps into epoch ``start_epoch`` (global step ``first_step``) drops the
        records of the steps that will be replayed."""
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():  # resuming: drop records of steps that will be replayed
            keep = [r for r in read_metrics(self.path) if _before(r, start_epoch, start_step)]
            atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            # On resume, points from the replayed steps onwards are purged, so no curve holds them twice.
            purge = first_step + 1 if first_step > 0 else None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    def write(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            prefix = record["type"]
            for k, v in record.items():
                if isinstance(v, float):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
