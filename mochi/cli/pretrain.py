"""``mochi pretrain``: MoCo-v2 / MoCHi pretraining (single process, or one per device under torchrun)."""

from __future__ import annotations

import logging

import click

from mochi.pretrain.config import PretrainConfig
from mochi.resnet import ARCHS
from mochi.transforms import AUGMENTATIONS

_D = PretrainConfig()


@click.command()
@click.option(
    "--data",
    default=_D.data,
    help="fashion-mnist | fashion-mnist-embedded | cifar10 | cifar100 | "
    "stl10 | PATH to an image-folder tree (ImageNet layout: PATH/train/<class>/*.JPEG).",
)
@click.option(
    "--data-root",
    default=None,
    help="Folder holding cifar10/cifar100/stl10 (or the Fashion-MNIST idx files).",
)
@click.option(
    "--subset", default=None, help="Class subset of an image folder: imagenet100, or a file of class names."
)
@click.option(
    "--split", default=_D.split, help="Dataset split (stl10: unlabeled or train+unlabeled for pretraining)."
)
@click.option(
    "--skip-corrupt", is_flag=True, help="Skip unreadable images (counted and logged) instead of stopping."
)
@click.option("--limit", default=None, type=int, help="Use a fixed random subset of N images (quick checks).")
@click.option(
    "-j", "--workers", default=_D.workers, type=int, help="Data-loading worker processes per device."
)
@click.option("-a", "--arch", default=_D.arch, type=click.Choice(list(ARCHS)), help="torchvision ResNet.")
@click.option(
    "--small-stem", is_flag=True, help="3x3 stride-1 first conv and no max-pool (32 px data; GPU speed)."
)
@click.option("--moco-dim", "dim", default=_D.dim, type=int, help="Embedding dimension.")
@click.option("--mlp/--no-mlp", default=_D.mlp, help="MLP projection head (MoCo-v2) or a linear one (v1).")
@click.option(
    "--moco-k", "queue_size", default=_D.queue_size, type=int, help="Queue size K (multiple of the batch)."
)
@click.option("--moco-m", "momentum", default=_D.momentum, type=float, help="Key-encoder momentum m.")
@click.option("--moco-t", "temperature", default=_D.temperature, type=float, help="Softmax temperature.")
@click.option(
    "--bn-splits",
    default=None,
    type=int,
    help="BN groups per device for split BN  [default: 8 on one device, 1 per process under torchrun]",
)
@click.option(
    "--aug", default=_D.aug, type=click.Choice(AUGMENTATIONS), help="aug+ or its no-blur small-image variant."
)
@click.option("--image-size", default=_D.image_size, type=int, help="Crop size in pixels.")
@click.option("--epochs", default=_D.epochs, type=int)
@click.option("-b", "--batch-size", default=_D.batch_size, type=int, help="Global batch over all processes.")
@click.option("--lr", default=None, type=float, help="Learning rate  [default: --base-lr x batch / 256]")
@click.option(
    "--base-lr", default=_D.base_lr, type=float, help="Learning rate per 256 images (linear scaling)."
)
@click.option("--momentum", "sgd_momentum", default=_D.sgd_momentum, type=float, help="SGD momentum.")
@click.option(
    "--wd", "weight_decay", default=_D.weight_decay, type=float, help="Weight decay (all parameters)."
)
@click.option(
    "--schedule", default=_D.schedule, type=click.Choice(["cos", "step"]), help="Per-epoch lr schedule."
)
@click.option("--lr-steps", default="120,160", help="Epochs where --schedule step multiplies the lr by 0.1.")
@click.option(
    "--mochi-n", default=_D.mochi_n, type=int, help="MoCHi N: hardest queue negatives per query (0: MoCo-v2)."
)
@click.option(
    "--mochi-s", default=_D.mochi_s, type=int, help="MoCHi s: type-1 mixes of two hard negatives per query."
)
@click.option(
    "--mochi-s-prime", default=_D.mochi_s_prime, type=int, help="MoCHi s': type-2 query mixes per query."
)
@click.option(
    "--mochi-warmup", default=_D.mochi_warmup, type=int, help="Epochs of plain MoCo before mixing starts."
)
@click.option("-o", "--output", default=_D.output, help="Run directory (config, metrics.jsonl, checkpoints).")
@click.option("--device", default=_D.device, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option(
    "--amp",
    default=_D.amp,
    type=click.Choice(["auto", "bf16", "fp16", "off"]),
    help="Mixed precision on GPU (auto: bf16 where supported); CPU always runs fp32.",
)
@click.option(
    "--channels-last/--no-channels-last", default=_D.channels_last, help="channels_last memory on GPU."
)
@click.option("--seed", default=_D.seed, type=int)
@click.option("--log-every", default=_D.log_every, type=int, help="Steps between metrics.jsonl records.")
@click.option(
    "--save-every", default=_D.save_every, type=int, help="Epochs between checkpoints (last always saved)."
)
@click.option(
    "--keep-last", default=_D.keep_last, type=int, help="Keep only the N newest checkpoints (0: all)."
)
@click.option(
    "--resume", default=None, help="'auto' (latest checkpoint in --output, if any) or a checkpoint path."
)
@click.option(
    "--stop-after", default=None, type=int, help="Stop after N epochs in this invocation (job time limits)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def pretrain(quiet: bool, lr_steps: str, **options) -> None:
    """Pretrain a ResNet with MoCo-v2, or MoCHi when --mochi-n > 0.

    \b
    Examples:
      mochi pretrain --data fashion-mnist -a resnet18 --image-size 32 --aug aug-plus-small \\
          --epochs 5 -b 128 --moco-k 4096 -o runs/moco
      mochi pretrain ... --mochi-n 1024 --mochi-s 1024 --mochi-s-prime 256 --mochi-warmup 10
      torchrun --nproc_per_node 8 -m mochi.cli pretrain --data /data/imagenet --subset imagenet100 ...
    """
    from mochi.pretrain.train import pretrain as run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        steps = tuple(int(x) for x in lr_steps.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated epochs, got {lr_steps!r}", param_hint="--lr-steps"
        ) from None
    cfg = PretrainConfig(lr_steps=steps, **options)
    result = run(cfg, show_progress=not quiet)
    if result.last_checkpoint is not None:
        click.echo(
            f"done: {result.epochs_done}/{cfg.epochs} epochs; last checkpoint {result.last_checkpoint}"
        )
