"""The pretraining loop: data, DDP, AMP, schedule, logging, checkpoints and exact resume.

One process per device, started by ``torchrun`` for several devices or nodes. Reproducibility: the data
order comes from ``(seed, epoch)``, each image's augmentation from ``(seed, epoch, index)`` and every RNG of
the main process (shuffle-BN permutations, MoCHi mixing) is re-seeded at each step from
``(seed, epoch, step, rank)`` (:mod:`mochi.pretrain.sampling`), so resuming from any checkpoint, also one
written mid-epoch, replays exactly what an uninterrupted run would have done (bit-identical on CPU, with
or without loader workers). A stop signal (:mod:`mochi.pretrain.preempt`) ends the run at the next step
with a checkpoint.

Longer than ~400 lines: the step loop, its device-side statistics, logging and mid-epoch checkpoints share
their state (sums, windows, timers), and reading them in one place is what keeps resume exact.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mochi import distributed as dist_utils
from mochi.errors import ConfigError, MochiError
from mochi.io import atomic_write_json
from mochi.pretrain.checkpoint import (
    build_checkpoint,
    checkpoint_step,
    load_checkpoint,
    save_checkpoint,
)
from mochi.pretrain.config import PretrainConfig, validate
from mochi.pretrain.moco import MochiParams, MoCo
from mochi.pretrain.negatives import UNKNOWN, ratios
from mochi.pretrain.preempt import DEFAULT_STOP_SIGNALS, StopSignals
from mochi.pretrain.run_dir import (
    MetricsLogger,
    check_resume_arch,
    check_resume_config,
    check_resume_state,
    prepare_run_dir,
    remove_orphan_temporaries,
)
from mochi.pretrain.sampling import build_pretrain_data, has_labels, seed_step

log = logging.getLogger("mochi.pretrain")


@dataclass
class PretrainResult:
    """Where a run's results are. ``stopped_by``: the signal that stopped it before ``epochs`` (else None),
    ``step`` steps into epoch ``epochs_done`` (0 when it stopped at an epoch end)."""

    run_dir: Path
    last_checkpoint: Path | None
    epochs_done: int
    last_metrics: dict[str, float]
    stopped_by: str | None = None
    step: int = 0


def lr_at_epoch(cfg: PretrainConfig, epoch: int) -> float:
    """The reference per-epoch schedule: cosine ``lr·0.5·(1+cos(π·epoch/epochs))`` or steps ×0.1."""
    lr = cfg.effective_lr()
    if cfg.schedule == "cos":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return lr * 0.1 ** sum(epoch >= m for m in cfg.lr_steps)


def amp_dtype(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if cfg.amp in ("bf16", "fp16"):
            raise ConfigError("amp", f"{cfg.amp} needs a GPU; on CPU training runs in fp32 (use auto or off)")
        return None
    if cfg.amp == "off":
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def pretrain(
    cfg: PretrainConfig, show_progress: bool = True, stop_signals: Sequence[int] = DEFAULT_STOP_SIGNALS
) -> PretrainResult:
    """Run (or resume) MoCo-v2 / MoCHi pretraining as configured. Returns where the results are.

    While training, the ``stop_signals`` stop the run at the next step with a checkpoint (the result's
    ``stopped_by`` names the signal); their previous handlers are put back when training ends.
    """
    device = dist_utils.resolve_device(cfg.device)
    dist_utils.init_from_env(device.type)
    threads = torch.get_num_threads()
    if device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):  # the user's choice wins
        torch.set_num_threads(dist_utils.intra_op_threads())
    try:
        return _pretrain(cfg, device, show_progress, stop_signals)
    except RuntimeError as err:
        lost = dist_utils.lost_peer_error(err)
        if lost is None:
            raise
        raise MochiError(lost) from err
    finally:
        torch.set_num_threads(threads)
        dist_utils.shutdown()


def _pretrain(
    cfg: PretrainConfig, device: torch.device, show_progress: bool, stop_signals: Sequence[int]
) -> PretrainResult:
    world, rank = dist_utils.world_size(), dist_utils.rank()
    validate(cfg, world)
    dtype = amp_dtype(cfg, device)
    run_dir, resume_from = prepare_run_dir(cfg)
    if dist_utils.is_main():
        remove_orphan_temporaries(run_dir)
    main = dist_utils.is_main()
    # The checkpoint to resume is read and checked before the data: a wrong file fails in seconds.
    ckpt = load_checkpoint(resume_from) if resume_from is not None else None
    if ckpt is not None:
        check_resume_config(ckpt.get("mochi", {}).get("config", {}), cfg, resume_from)
        check_resume_arch(ckpt, cfg, resume_from)

    # Data first: a missing or empty dataset is reported before any model is built.
    data = build_pretrain_data(cfg, world, rank, device)
    dataset, loader, steps_per_epoch = data.dataset, data.loader, data.steps_per_epoch
    labelled = has_labels(dataset)
    if cfg.oracle and not labelled:
        raise ConfigError(
            "oracle",
            f"needs class labels, and {cfg.data} (split {cfg.split}) has none; "
            "drop it or pretrain on a labelled dataset or split",
        )

    torch.manual_seed(cfg.seed)  # identical initial weights and queue on every rank
    mochi = MochiParams(cfg.n_hard, cfg.s, cfg.s_prime) if cfg.uses_mochi else None
    model = MoCo(
        arch=cfg.arch,
        dim=cfg.dim,
        queue_size=cfg.queue_size,
        momentum=cfg.momentum,
        temperature=cfg.temperature,
        mlp=cfg.mlp,
        small_stem=cfg.small_stem,
        bn_splits=cfg.resolved_bn_splits(world),
        mochi=mochi,
        analysis_n=cfg.hard_set_size() if cfg.analysis else None,
        oracle=cfg.oracle,
        symmetric=cfg.symmetric,
    ).to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Weight decay on all parameters, as the reference; the key encoder is never optimised.
    optimizer = torch.optim.SGD(
        model.encoder_q.parameters(),
        lr=cfg.effective_lr(),
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    generator = torch.Generator(device=device)

    start_epoch, start_step, partial = 0, 0, None
    if ckpt is not None:
        state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
        # Checkpoints written before the label queue: its entries' classes are unknown.
        state.setdefault("queue_labels", torch.full_like(model.queue_labels, UNKNOWN, device="cpu"))
        check_resume_state(model, state, resume_from)
        model.load_state_dict(state)
        optimizer.load_state_dict(ckpt["optimizer"])
        meta = ckpt.get("mochi", {})
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        # The saved RNG states are informational: every stream is re-seeded at each step.
        start_epoch, start_step = int(ckpt["epoch"]), checkpoint_step(ckpt)
        partial = meta.get("partial")
        if start_step and meta.get("steps_per_epoch") != steps_per_epoch:
            raise MochiError(
                f"cannot resume from {resume_from}: it was written {start_step} steps into an epoch of "
                f"{meta.get('steps_per_epoch')} steps, and this run's epochs have {steps_per_epoch}; "
                "resume with the data and batch size of the run that wrote it"
            )
        if main:
            log.info("resumed from %s at epoch %d, step %d", resume_from, start_epoch, start_step)

    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run_dir / "config.json",
            {
                "config": cfg.to_dict(),
                "world_size": world,
                "device": str(device),
                "amp": str(dtype).removeprefix("torch.") if dtype else "fp32",
                "effective_lr": cfg.effective_lr(),
                "bn_splits": cfg.resolved_bn_splits(world),
                "dataset": dataset.identity(),
                "steps_per_epoch": steps_per_epoch,
                "intra_op_threads": torch.get_num_threads(),
                "loader_workers": cfg.workers,
            },
        )
    logger = MetricsLogger(
        run_dir,
        start_epoch,
        enabled=main,
        first_step=start_epoch * steps_per_epoch + start_step,
        start_step=start_step,
    )

    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    last_ckpt: Path | None = resume_from
    last_metrics: dict[str, float] = {}

    def save(epoch: int, step: int = 0, partial: dict[str, Any] | None = None) -> None:
        """Checkpoint after ``step`` steps of ``epoch`` (0: after all of it), written by rank 0."""
        nonlocal last_ckpt
        if main:
            ckpt = build_checkpoint(
                epoch_index=epoch,
                step=step,
                partial=partial,
                arch=cfg.arch,
                model=model,
                optimizer=optimizer,
                config=cfg.to_dict(),
                scaler_state=scaler.state_dict() if scaler.is_enabled() else None,
                generator=generator if device.type == "cpu" else None,
                metrics=last_metrics,
            )
            ckpt["mochi"]["steps_per_epoch"] = steps_per_epoch
            last_ckpt = save_checkpoint(ckpt, run_dir, cfg.keep_last)
        dist_utils.barrier()

    stop = StopSignals(stop_signals)
    epoch, stopped_step = start_epoch, 0
    try:
        with stop:
            for epoch in range(start_epoch, end_epoch):
                skip = start_step if epoch == start_epoch else 0
                data.start_epoch(epoch, skip)
                lr = lr_at_epoch(cfg, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                mix = cfg.uses_mochi and epoch >= cfg.mochi_warmup
                metrics, stopped_step = _train_one_epoch(
                    cfg,
                    ddp_model,
                    loader,
                    optimizer,
                    scaler,
                    dtype,
                    generator,
                    device,
                    epoch,
                    lr,
                    mix,
                    steps_per_epoch,
                    logger,
                    show_progress and main,
                    dataset,
                    labelled,
                    first_step=skip,
                    partial=partial if epoch == start_epoch else None,
                    stop=stop,
                    save_mid=lambda step, part, epoch=epoch: save(epoch, step, part),
                )
                if metrics is None:  # stopped mid-epoch, its checkpoint written
                    break
                last_metrics = metrics
                due = cfg.save_every_steps and ((epoch + 1) * steps_per_epoch) % cfg.save_every_steps == 0
                if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == end_epoch or due or stop.stopping:
                    save(epoch)
                if stop.stopping:
                    epoch += 1
                    break
            else:
                epoch = end_epoch
    finally:
        logger.close()
    stopped = stop.name if stop.stopping and (epoch, stopped_step) < (end_epoch, 0) else None
    return PretrainResult(run_dir, last_ckpt, epoch, last_metrics, stopped, stopped_step if stopped else 0)


def _train_one_epoch(
    cfg: PretrainConfig,
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None,
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
    lr: float,
    mix: bool,
    steps: int,
    logger: MetricsLogger,
    show_progress: bool,
    dataset,
    labelled: bool,
    first_step: int,
    partial: dict[str, Any] | None,
    stop: StopSignals,
    save_mid: Callable[[int, dict[str, Any]], None],
) -> tuple[dict[str, float] | None, int]:
    """One epoch from step ``first_step`` (``partial``: the metric sums of the steps before it).

    Returns the epoch's metrics and 0, or None and the steps done when a stop signal ended it early (after
    ``save_mid`` wrote its checkpoint). ``save_mid(step, partial)`` also runs every ``save_every_steps``.
    """
    model.train()
    channels_last = device.type == "cuda" and cfg.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    partial = partial or {}
    sums: dict[str, float] = dict(partial.get("sums", {}))
    window: dict[str, float] = dict(partial.get("window", {}))
    n_window = int(partial.get("n_window", 0))
    now = time.perf_counter()  # times of a resumed epoch count the time spent training it
    t_epoch, t_window = now - partial.get("elapsed_s", 0.0), now - partial.get("window_s", 0.0)
    bar = tqdm(
        total=steps * cfg.batch_size,
        initial=first_step * cfg.batch_size,
        desc=f"epoch {epoch + 1}/{cfg.epochs}{' mochi' if mix else ''}",
        unit="img",
        unit_scale=True,
        disable=not show_progress,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    # Each step's statistics stay on the device and are read back in one transfer per logging step (or
    # before a checkpoint), not one host sync per value per step; the sums add them in step order as before.
    pending: list[torch.Tensor] = []
    names: list[str] = []

    def read_back(last_step: int) -> None:
        rows = torch.stack(pending).tolist() if pending else []
        pending.clear()
        for i, row in enumerate(rows):
            values = dict(zip(names, row, strict=True))
            if not math.isfinite(values["loss"]):
                at = last_step - len(rows) + i + 1
                raise MochiError(
                    f"loss became {values['loss']} at epoch {epoch + 1}, step {at}; "
                    "lower --lr or check the data"
                )
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                window[k] = window.get(k, 0.0) + v
            bar.set_postfix(loss=f"{values['loss']:.3f}", top1=f"{values['top1']:.3f}", refresh=False)

    for step, ((im_q, im_k), labels) in enumerate(loader, start=first_step):
        seed_step(cfg.seed, epoch, step, dist_utils.rank(), generator)
        im_q = im_q.to(device, non_blocking=True, memory_format=fmt)
        im_k = im_k.to(device, non_blocking=True, memory_format=fmt)
        labels = labels.to(device, non_blocking=True) if labelled else None
        with autocast:
            out = model(im_q, im_k, mix, generator, labels)
        loss = out["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        names = ["loss", *(k for k in out if k != "loss")]
        pending.append(torch.stack([out[k].detach().float() for k in names]))
        n_window += 1
        bar.update(cfg.batch_size)
        global_step = epoch * steps + step + 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            read_back(step + 1)  # a non-finite loss stops the run here, before anything is written
            now = time.perf_counter()
            avg = ratios(dist_utils.all_reduce_mean({k: v / n_window for k, v in window.items()}, device))
            record = {
                "type": "step",
                "epoch": epoch,
                "step": step + 1,
                "global_step": global_step,
                "lr": lr,
                "mixing": mix,
                "images_per_s": n_window * cfg.batch_size / max(now - t_window, 1e-9),
                **avg,
            }
            logger.write(record, global_step)
            window, n_window, t_window = {}, 0, now
        due = cfg.save_every_steps is not None and global_step % cfg.save_every_steps == 0
        # Under DDP the stop agreement is a collective read back on the host: per logging step, not per step.
        stopping = stop.agreed(device, due=(step + 1) % cfg.log_every == 0 or step + 1 == steps or due)
        if step + 1 < steps and (stopping or due):
            read_back(step + 1)  # the checkpoint's sums need every step so far
            # Under DDP the saved sums are the ranks' mean (the logged epoch mean is the same maths).
            now = time.perf_counter()
            state = {
                "sums": dist_utils.all_reduce_mean(sums, device),
                "window": dist_utils.all_reduce_mean(window, device),
                "n_window": n_window,
                "elapsed_s": now - t_epoch,
                "window_s": now - t_window,
            }
            save_mid(step + 1, state)
            if stopping:
                bar.close()
                return None, step + 1
    bar.close()
    elapsed = time.perf_counter() - t_epoch
    metrics = ratios(dist_utils.all_reduce_mean({k: v / steps for k, v in sums.items()}, device))
    metrics.update(lr=lr, images_per_s=steps * cfg.batch_size / elapsed, time_s=elapsed)
    skipped = getattr(dataset, "corrupt_count", lambda: 0)()
    record = {"type": "epoch", "epoch": epoch, "global_step": (epoch + 1) * steps, "mixing": mix, **metrics}
    if skipped:
        record["corrupt_skipped"] = skipped
    logger.write(record, (epoch + 1) * steps)
    if show_progress:
        extra = (
            f" hard_sim {metrics['hard_sim']:.3f} synthetic_sim {metrics['synthetic_sim']:.3f}" if mix else ""
        )
        tqdm.write(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f} top1 {metrics['top1']:.3f} "
            f"lr {lr:.4g} {metrics['images_per_s']:.0f} img/s{extra}"
        )
    return metrics, 0
