"""One seed's Detectron2 fine-tune, in one process: the trainer, the load check, and process-state hygiene.

:func:`train_seed` is what Detectron2's ``launch`` runs in every process of a seed (in the calling process
when there is one): register the data, build the trainer, check that the backbone loaded, train, evaluate
once, and write ``eval.json`` (rank 0). Everything it changes for the length of the seed — Detectron2's
log handlers and levels, two warning filters, the global RNGs and ``PYTHONHASHSEED`` that
``seed_all_rng`` sets — is put back when it returns or raises.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mochi.errors import MochiError
from mochi.io import atomic_write_json
from mochi.transfer.detectron2.datasets import DatasetSpec, register_dataset

#: Loggers that get a console handler and ``log.txt`` for the length of a seed.
LOGGERS = ("detectron2", "fvcore", "mochi")
#: Expected from Detectron2 v0.6 on current torch; they say nothing about the run.
QUIET_WARNINGS = (r"`torch\.jit\.script` is deprecated", r"torch\.meshgrid: in an upcoming release")


def trainer_class():
    """Detectron2's ``DefaultTrainer`` with the evaluator chosen by the test set's type, evaluating once,
    after training (by :func:`train_seed`), not from a hook."""
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "")
            if kind == "pascal_voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            if kind == "coco":
                folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
                return COCOEvaluator(dataset_name, output_dir=folder)
            raise MochiError(f"test set {dataset_name!r}: no evaluator for evaluator_type {kind!r}")

        def build_hooks(self):
            # The evaluation is run by train_seed after training (also after a resume of a finished run).
            return [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]

    return Trainer


def backbone_not_loaded(model, weights: Mapping[str, Any]) -> list[str]:
    """Backbone tensors of a Detectron2 ``model`` that do not hold the value of ``weights`` (a ``.pkl``'s
    ``model`` dict, Detectron2 ResNet names). Covers ``backbone.[bottom_up.]`` and the C4 ``roi_heads.res5``;
    the extra norm after res5 is new and not counted.
    """
    import re

    import numpy as np
    import torch

    pattern = re.compile(r"^(stem|res[2-5]\.\d+)\.")
    bad = []
    for key, value in model.state_dict().items():
        for prefix in ("backbone.bottom_up.", "backbone.", "roi_heads."):
            if key.startswith(prefix):
                name = key[len(prefix) :]
                break
        else:
            continue
        if not pattern.match(name):
            continue
        ref = weights.get(name)
        if ref is None or not torch.equal(value.cpu(), torch.as_tensor(np.asarray(ref))):
            bad.append(key)
    return bad


@contextlib.contextmanager
def seed_logging(seed_dir: Path, rank: int, verbose: bool) -> Iterator[None]:
    """Detectron2's console lines (rank 0; INFO with ``verbose``, else warnings only) and every message in
    ``seed_dir/log.txt`` (rank 0), for the length of the block; then the loggers are as they were.

    The :data:`LOGGERS` are set to DEBUG and do not propagate while the block runs (as Detectron2's own
    ``setup_logger`` leaves them); with the ``detectron2`` logger enabled, ``DefaultTrainer`` does not call
    ``setup_logger`` itself, which would install handlers for good.
    """
    from detectron2.utils.logger import _ColorfulFormatter  # Detectron2's console format, colours included
    from termcolor import colored

    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    added: list[tuple[logging.Logger, logging.Handler]] = []
    log_file = None
    if rank == 0:
        log_file = logging.FileHandler(seed_dir / "log.txt")
        log_file.setLevel(logging.DEBUG)
        log_file.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
    try:
        for lg in loggers:
            lg.setLevel(logging.DEBUG)
            lg.propagate = False
            if rank != 0:
                continue
            console = logging.StreamHandler(stream=sys.stdout)
            console.setLevel(logging.INFO if verbose else logging.WARNING)
            console.setFormatter(
                _ColorfulFormatter(
                    colored("[%(asctime)s %(name)s]: ", "green") + "%(message)s",
                    datefmt="%m/%d %H:%M:%S",
                    root_name=lg.name,
                    abbrev_name=lg.name[:3],
                )
            )
            for handler in (console, log_file):
                lg.addHandler(handler)
                added.append((lg, handler))
        yield
    finally:
        for lg, handler in added:
            lg.removeHandler(handler)
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.setLevel(level)
            lg.propagate = propagate
        if log_file is not None:
            log_file.close()


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Ignore :data:`QUIET_WARNINGS` inside the block; the warning filters are restored after it."""
    with warnings.catch_warnings():
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global RNGs (python, numpy, torch CPU and initialised CUDA devices) and
    ``PYTHONHASHSEED`` after the block: Detectron2 seeds them for training."""
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    hash_seed = os.environ.get("PYTHONHASHSEED")
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if hash_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = hash_seed


def train_seed(cfg, datasets: Sequence[DatasetSpec], verbose: bool) -> None:
    """One process of one seed (run by Detectron2's ``launch``): train, evaluate, write ``eval.json``."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    import mochi.transfer.detectron2.head  # noqa: F401 - registration in spawned workers
    from mochi.safe_pickle import safe_load

    for ds in datasets:
        register_dataset(ds)
    seed_dir = Path(cfg.OUTPUT_DIR)
    rank = comm.get_rank()
    with preserved_rng(), quiet_warnings(), seed_logging(seed_dir, rank, verbose):
        # Different ranks draw different data: seed + rank, as Detectron2's default_setup does.
        seed_all_rng(cfg.SEED + rank)
        Trainer = trainer_class()
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=True)
        if trainer.start_iter == 0 and cfg.MODEL.WEIGHTS:
            weights = safe_load(cfg.MODEL.WEIGHTS)["model"]
            bad = backbone_not_loaded(trainer.checkpointer.model, weights)
            if bad:
                raise MochiError(
                    f"{len(bad)} backbone tensors of the detector did not load from {cfg.MODEL.WEIGHTS} "
                    f"(e.g. {bad[:3]}): does MODEL.RESNETS.DEPTH match the checkpoint's architecture?"
                )
        start, start_iter = time.perf_counter(), trainer.start_iter
        trainer.train()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        results = Trainer.test(cfg, trainer.model)
        eval_s = time.perf_counter() - start
        if comm.is_main_process():
            atomic_write_json(
                seed_dir / "eval.json",
                {"results": _plain(results), "start_iter": start_iter, "max_iter": cfg.SOLVER.MAX_ITER,
                 "train_s": train_s, "eval_s": eval_s},
            )  # fmt: skip
        comm.synchronize()


def _plain(obj):
    """Evaluator output as plain JSON: mappings, lists, floats; NaN/inf → ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return float(obj) if hasattr(obj, "__float__") and not isinstance(obj, (int, bool)) else obj
