"""The pretraining loop: data, DDP, AMP, schedule, logging, checkpoints and exact resume.

One process per device, started by ``torchrun`` for several devices or nodes. Reproducibility: every
RNG (augmentation workers, the main process, shuffle-BN permutations and MoCHi mixing) is re-seeded at
the start of each epoch from ``(seed, epoch, rank)``, so resuming from an epoch checkpoint replays
exactly what an uninterrupted run would have done (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from mochi import distributed as dist_utils
from mochi.data import LimitedDataset, load_dataset
from mochi.errors import ConfigError, MochiError
from mochi.io import atomic_write_json
from mochi.pretrain.checkpoint import (
    build_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mochi.pretrain.config import PretrainConfig, validate
from mochi.pretrain.moco import MochiParams, MoCo
from mochi.pretrain.run_dir import (
    MetricsLogger,
    check_resume_arch,
    check_resume_config,
    check_resume_state,
    prepare_run_dir,
    remove_orphan_temporaries,
)
from mochi.transforms import TwoCrops, build_augmentation

log = logging.getLogger("mochi.pretrain")


@dataclass
class PretrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    epochs_done: int
    last_metrics: dict[str, float]


def lr_at_epoch(cfg: PretrainConfig, epoch: int) -> float:
    """The reference per-epoch schedule: cosine ``lr·0.5·(1+cos(π·epoch/epochs))`` or steps ×0.1."""
    lr = cfg.effective_lr()
    if cfg.schedule == "cos":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return lr * 0.1 ** sum(epoch >= m for m in cfg.lr_steps)


def epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank, RNG stream)."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + stream) % (2**63 - 1)


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


def pretrain(cfg: PretrainConfig, show_progress: bool = True) -> PretrainResult:
    """Run (or resume) MoCo-v2 / MoCHi pretraining as configured. Returns where the results are."""
    device = dist_utils.resolve_device(cfg.device)
    dist_utils.init_from_env(device.type)
    threads = torch.get_num_threads()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # the user's choice wins
        torch.set_num_threads(dist_utils.intra_op_threads(cfg.workers))
    try:
        return _pretrain(cfg, device, show_progress)
    except RuntimeError as err:
        lost = dist_utils.lost_peer_error(err)
        if lost is None:
            raise
        raise MochiError(lost) from err
    finally:
        torch.set_num_threads(threads)
        dist_utils.shutdown()


def _pretrain(cfg: PretrainConfig, device: torch.device, show_progress: bool) -> PretrainResult:
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
    transform = TwoCrops(build_augmentation(cfg.aug, cfg.image_size))
    dataset = load_dataset(
        cfg.data,
        cfg.split,
        root=cfg.data_root,
        subset=cfg.subset,
        transform=transform,
        on_corrupt="skip" if cfg.skip_corrupt else "error",
    )
    if cfg.limit is not None:
        dataset = LimitedDataset(dataset, cfg.limit, seed=cfg.seed)
    per_rank = cfg.batch_size // world
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise MochiError(
            f"the dataset has {len(dataset)} images, fewer than one global batch of {cfg.batch_size}; "
            "lower --batch-size or use more data"
        )
    loader_gen = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=loader_gen,
        persistent_workers=False,  # fresh workers each epoch, seeded per epoch: exact resume
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

    start_epoch = 0
    if ckpt is not None:
        state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
        check_resume_state(model, state, resume_from)
        model.load_state_dict(state)
        optimizer.load_state_dict(ckpt["optimizer"])
        meta = ckpt.get("mochi", {})
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        # The saved RNG states are informational: every stream is re-seeded at each epoch start.
        start_epoch = int(ckpt["epoch"])
        if main:
            log.info("resumed from %s at epoch %d", resume_from, start_epoch)

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
    logger = MetricsLogger(run_dir, start_epoch, enabled=main, first_step=start_epoch * steps_per_epoch)

    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    last_ckpt: Path | None = resume_from
    last_metrics: dict[str, float] = {}
    try:
        for epoch in range(start_epoch, end_epoch):
            # Re-seed every stream from (seed, epoch, rank): resuming replays exactly.
            torch.manual_seed(epoch_seed(cfg.seed, epoch, rank, 0))
            random.seed(epoch_seed(cfg.seed, epoch, rank, 1))
            np.random.seed(epoch_seed(cfg.seed, epoch, rank, 2) % 2**32)
            loader_gen.manual_seed(epoch_seed(cfg.seed, epoch, rank, 3))
            generator.manual_seed(epoch_seed(cfg.seed, epoch, rank, 4))
            sampler.set_epoch(epoch)
            lr = lr_at_epoch(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            mix = cfg.uses_mochi and epoch >= cfg.mochi_warmup
            last_metrics = _train_one_epoch(
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
            )
            if main and ((epoch + 1) % cfg.save_every == 0 or epoch + 1 == end_epoch):
                ckpt = build_checkpoint(
                    epoch_index=epoch,
                    arch=cfg.arch,
                    model=model,
                    optimizer=optimizer,
                    config=cfg.to_dict(),
                    scaler_state=scaler.state_dict() if scaler.is_enabled() else None,
                    generator=generator if device.type == "cpu" else None,
                    metrics=last_metrics,
                )
                last_ckpt = save_checkpoint(ckpt, run_dir, cfg.keep_last)
            dist_utils.barrier()
    finally:
        logger.close()
    return PretrainResult(run_dir, last_ckpt, end_epoch, last_metrics)


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
) -> dict[str, float]:
    model.train()
    channels_last = device.type == "cuda" and cfg.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    sums: dict[str, float] = {}
    window: dict[str, float] = {}
    n_window = 0
    t_epoch = t_window = time.perf_counter()
    bar = tqdm(
        total=steps * cfg.batch_size,
        desc=f"epoch {epoch + 1}/{cfg.epochs}{' mochi' if mix else ''}",
        unit="img",
        unit_scale=True,
        disable=not show_progress,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    for step, ((im_q, im_k), _) in enumerate(loader):
        im_q = im_q.to(device, non_blocking=True, memory_format=fmt)
        im_k = im_k.to(device, non_blocking=True, memory_format=fmt)
        with autocast:
            out = model(im_q, im_k, mix, generator)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise MochiError(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                "lower --lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        values = {k: float(v.detach()) for k, v in out.items()}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
            window[k] = window.get(k, 0.0) + v
        n_window += 1
        bar.update(cfg.batch_size)
        bar.set_postfix(loss=f"{values['loss']:.3f}", top1=f"{values['top1']:.3f}", refresh=False)
        global_step = epoch * steps + step + 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            now = time.perf_counter()
            avg = dist_utils.all_reduce_mean({k: v / n_window for k, v in window.items()}, device)
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
    bar.close()
    elapsed = time.perf_counter() - t_epoch
    metrics = dist_utils.all_reduce_mean({k: v / steps for k, v in sums.items()}, device)
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
    return metrics
