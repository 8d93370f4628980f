"""``mochi pretrain``: MoCo-v2 / MoCHi pretraining (single process, or one per device under torchrun).

Every option is a field of :class:`~mochi.pretrain.config.PretrainConfig` (defaults and types from there);
``--config`` replays a saved run's ``config.json``, the flags typed override it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from mochi.cli.options import REPLAYED, Command, field_options, flag
from mochi.constants import ARCHS, AUGMENTATIONS
from mochi.pretrain.config import AMP_MODES, DEVICES, SCHEDULES, PretrainConfig, upgrade

# Field -> flags and help; the first flag is the one errors name when none was typed.
PRETRAIN_FLAGS = {
    "data": flag(
        "--data",
        help="fashion-mnist | fashion-mnist-embedded | cifar10 | cifar100 | "
        "stl10 | PATH to an image-folder tree (ImageNet layout: PATH/train/<class>/*.JPEG).",
    ),
    "data_root": flag(
        "--data-root", help="Folder holding cifar10/cifar100/stl10 (or the Fashion-MNIST idx files)."
    ),
    "subset": flag(
        "--subset", help="Class subset of an image folder: imagenet100, or a file of class names."
    ),
    "split": flag("--split", help="Dataset split (stl10: unlabeled or train+unlabeled for pretraining)."),
    "skip_corrupt": flag(
        "--skip-corrupt", help="Skip unreadable images (counted and logged) instead of stopping."
    ),
    "limit": flag("--limit", help="Use a fixed random subset of N images (quick checks)."),
    "workers": flag("-j", "--workers", help="Data-loading worker processes per device."),
    "arch": flag("-a", "--arch", choices=list(ARCHS), help="torchvision ResNet."),
    "small_stem": flag(
        "--small-stem", help="3x3 stride-1 first conv and no max-pool (32 px data; GPU speed)."
    ),
    "dim": flag("--dim", "--moco-dim", help="Embedding dimension."),
    "mlp": flag("--mlp/--no-mlp", help="MLP projection head (MoCo-v2) or a linear one (v1)."),
    "queue_size": flag("--queue-size", "--moco-k", help="Queue size K (multiple of the batch)."),
    "momentum": flag("--moco-m", help="Key-encoder momentum m."),
    "temperature": flag("--temperature", "--moco-t", help="Softmax temperature."),
    "symmetric": flag(
        "--symmetric", help="Symmetric loss: each view is also the other's key (MoCo v3); 2x the compute.",
    ),
    "bn_splits": flag(
        "--bn-splits", default_text="8 on one device, 1 per process under torchrun",
        help="BN groups per device for split BN.",
    ),
    "aug": flag(
        "--aug", choices=AUGMENTATIONS,
        help="aug+, its no-blur small-image variant, or that without the colour steps grey images ignore.",
    ),
    "crop_min": flag("--crop-min", help="Smallest random crop, as a share of the image area."),
    "image_size": flag("--image-size", help="Crop size in pixels."),
    "epochs": flag("--epochs"),
    "batch_size": flag("-b", "--batch-size", help="Global batch over all processes."),
    "lr": flag("--lr", default_text="--base-lr x batch / 256", help="Learning rate."),
    "base_lr": flag("--base-lr", help="Learning rate per 256 images (linear scaling)."),
    "sgd_momentum": flag("--momentum", help="SGD momentum."),
    "weight_decay": flag("--wd", "--weight-decay", help="Weight decay (all parameters)."),
    "schedule": flag("--schedule", choices=SCHEDULES, help="Per-epoch lr schedule."),
    "lr_steps": flag(
        "--lr-steps", empty_ok=True, help="Epochs where --schedule step multiplies the lr by 0.1."
    ),
    "n_hard": flag("--mochi-n", help="MoCHi N: hardest queue negatives per query (0: MoCo-v2)."),
    "s": flag("--mochi-s", help="MoCHi s: type-1 mixes of two hard negatives per query."),
    "s_prime": flag("--mochi-s-prime", help="MoCHi s': type-2 query mixes per query."),
    "mochi_warmup": flag("--mochi-warmup", help="Epochs of plain MoCo before mixing starts."),
    "oracle": flag(
        "--oracle", help="Class oracle: drop same-class queue entries from the negatives (needs labels).",
    ),
    "analysis": flag(
        "--analysis/--no-analysis", help="Log positive rank, false-negative rates, synthetic-point stats.",
    ),
    "analysis_n": flag(
        "--analysis-n", help="Hardest negatives per query for the false-negative rate (MoCHi: --mochi-n).",
    ),
    "output": flag("-o", "--output", help="Run directory (config, metrics.jsonl, checkpoints)."),
    "device": flag("--device", choices=DEVICES),
    "amp": flag(
        "--amp", choices=AMP_MODES,
        help="Mixed precision on GPU (auto: bf16 where supported); CPU always runs fp32.",
    ),
    "channels_last": flag("--channels-last/--no-channels-last", help="channels_last memory on GPU."),
    "seed": flag("--seed"),
    "log_every": flag("--log-every", help="Steps between metrics.jsonl records."),
    "save_every": flag("--save-every", help="Epochs between checkpoints (last always saved)."),
    "save_every_steps": flag(
        "--save-every-steps", help="Also a mid-epoch checkpoint every N steps (only the newest is kept)."
    ),
    "keep_last": flag("--keep-last", help="Keep only the N newest checkpoints (0: all)."),
    "resume": flag("--resume", help="'auto' (latest checkpoint in --output, if any) or a checkpoint path."),
    "stop_after": flag("--stop-after", help="Stop after N epochs in this invocation (job time limits)."),
}  # fmt: skip

# What one invocation does, not what the run is: a replayed config does not carry them over.
NOT_REPLAYED = ("resume", "stop_after")


def read_config(path: str) -> dict[str, Any]:
    """The fields of a saved run: ``config.json`` (its ``config`` object) or a bare object of fields."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise click.BadParameter(f"cannot read {path} as JSON: {err}", param_hint="--config") from None
    if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
        saved = saved["config"]  # a run directory's config.json: the rest describes the run (world size...)
    if not isinstance(saved, dict):
        raise click.BadParameter(f"{path} holds no object of pretraining fields", param_hint="--config")
    return upgrade(saved)


def replay(ctx: click.Context, path: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every value not typed on the command line taken from the config at ``path``."""
    saved = read_config(path)
    label = Path(path).name
    params = {p.name: p for p in ctx.command.params}
    replayed = []
    for field, value in saved.items():
        if field not in PRETRAIN_FLAGS:
            raise click.BadParameter(
                f"{label} field {field} is not a pretraining option", param_hint="--config"
            )
        if field in NOT_REPLAYED or ctx.get_parameter_source(field) is ParameterSource.COMMANDLINE:
            continue
        if value is not None:
            try:
                value = params[field].type.convert(value, params[field], ctx)
            except click.BadParameter as err:
                raise click.BadParameter(
                    f"{label} field {field}: {err.message}", param_hint="--config"
                ) from None
        options[field] = value
        replayed.append(field)
    ctx.meta[REPLAYED] = (label, tuple(replayed))
    return options


@click.command("pretrain", cls=Command)
@click.option(
    "--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Replay a run: its config.json; flags given override it (--resume, --stop-after: not replayed).",
)  # fmt: skip
@field_options(PretrainConfig, PRETRAIN_FLAGS)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def pretrain_cmd(ctx: click.Context, config_file: str | None, quiet: bool, **options) -> None:
    """Pretrain a ResNet with MoCo-v2, or MoCHi when --mochi-n > 0.

    \b
    Examples:
      mochi pretrain --data fashion-mnist -a resnet18 --image-size 32 --aug aug-plus-small \\
          --epochs 5 -b 128 --moco-k 4096 -o runs/moco
      mochi pretrain ... --mochi-n 1024 --mochi-s 1024 --mochi-s-prime 256 --mochi-warmup 10
      mochi pretrain --config runs/moco/config.json --epochs 10 -o runs/moco-10
      torchrun --nproc_per_node 8 -m mochi.cli pretrain --data /data/imagenet --subset imagenet100 ...
    """
    from mochi.pretrain.train import pretrain as run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if config_file is not None:
        options = replay(ctx, config_file, options)
    cfg = PretrainConfig(**options)
    result = run(cfg, show_progress=not quiet)
    if result.stopped_by is not None:
        from mochi.pretrain.preempt import STOPPED_EXIT_CODE

        where = f"epoch {result.epochs_done + 1}, step {result.step}" if result.step else "an epoch end"
        click.echo(
            f"stopped by {result.stopped_by} at {where}: saved {result.last_checkpoint}. Continue with the "
            f"same command and --resume auto (-o {result.run_dir})",
            err=True,
        )
        ctx.exit(STOPPED_EXIT_CODE)
    if result.last_checkpoint is not None:
        click.echo(
            f"done: {result.epochs_done}/{cfg.epochs} epochs; last checkpoint {result.last_checkpoint}"
        )


def config_from_args(args: list[str]) -> PretrainConfig:
    """The :class:`PretrainConfig` that ``mochi pretrain ARGS`` would run (``--config`` replay included),
    for launchers that run pretraining in-process (:mod:`mochi.cli.slurm`)."""
    with pretrain_cmd.make_context("pretrain", list(args)) as ctx:
        options = dict(ctx.params)
        config_file = options.pop("config_file")
        options.pop("quiet")
        if config_file is not None:
            options = replay(ctx, config_file, options)
        return PretrainConfig(**options)
