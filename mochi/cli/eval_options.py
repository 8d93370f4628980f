"""Options shared by the frozen-evaluation subcommands (knn, linear): backbone, data, features."""

from __future__ import annotations

import click

from mochi.eval.evaluate import EvalData
from mochi.resnet import ARCHS
from mochi.transfer.formats import ENCODERS

_D = EvalData()


def backbone_options(f):
    options = [
        click.argument("checkpoint", required=False),
        click.option("--random-init", is_flag=True, help="Evaluate a random-init --arch (baseline)."),
        click.option(
            "-a", "--arch", type=click.Choice(list(ARCHS)), default=None,
            help="Architecture of --random-init; with a checkpoint, asserts it  [default: inferred].",
        ),
        click.option("--small-stem", is_flag=True, help="--random-init: 3x3 stride-1 conv1, no max-pool."),
        click.option("--init-seed", default=0, type=int, help="--random-init: seed of the initialisation."),
        click.option(
            "--encoder", type=click.Choice(ENCODERS), default=None,
            help="Which network of a two-encoder checkpoint  [default: query (MoCo), teacher (DINO)].",
        ),
        click.option("--prefix", default=None, help="Backbone key prefix, overriding detection."),
        click.option(
            "--trust-checkpoint", is_flag=True,
            help="Allow arbitrary unpickling: only for files from a trusted source.",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def data_options(f):
    options = [
        click.option(
            "--data", default=_D.data,
            help="fashion-mnist | fashion-mnist-embedded | cifar10 | cifar100 | stl10 | PATH (image folder).",
        ),
        click.option("--data-root", default=None, help="Folder holding the dataset files."),
        click.option("--subset", default=None, help="Image folders: imagenet100, or a file of class names."),
        click.option("--train-split", default=_D.train_split, help="Split the classifier learns from."),
        click.option(
            "--test-split", default=_D.test_split, help="Split reported (image folders: usually val)."
        ),
        click.option("--limit-train", default=None, type=int, help="Random N train images (seed 0)."),
        click.option("--limit-test", default=None, type=int, help="Random N test images (seed 0)."),
        click.option(
            "--image-size", default=_D.image_size, type=int,
            help="Center-crop size (use the pretraining size, e.g. 32 for Fashion-MNIST runs).",
        ),
        click.option(
            "--crop-fraction", default=None, type=float,
            help="Crop / resize ratio  [default: 0.875 (Resize 256, CenterCrop 224) from 128 px, else 1.0]",
        ),
        click.option("-b", "--batch-size", default=_D.batch_size, type=int, help="Images per batch."),
        click.option("-j", "--workers", default=_D.workers, type=int, help="Data-loading workers."),
        click.option("--device", default=_D.device, type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--amp/--no-amp", default=_D.amp, help="Mixed precision on GPU (bf16 where supported)."),
        click.option(
            "--cache-dir", default=None,
            help="Feature cache folder  [default: $MOCHI_CACHE/features or ~/.cache/mochi/features]",
        ),
        click.option("--no-cache", is_flag=True, help="Extract features in memory, without the cache."),
        click.option(
            "--feature-dtype", "dtype", default=_D.dtype, type=click.Choice(["float32", "float16"]),
            help="Storage type of cached features (float16 halves disk and memory).",
        ),
        click.option(
            "-o", "--results", default="results", help="Results folder: one JSON record per evaluation."
        ),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def split_backbone(options: dict) -> dict:
    """Pop the backbone options out of ``options`` as keyword arguments of ``load_eval_backbone``."""
    return {
        "checkpoint": options.pop("checkpoint"),
        "random_init": options.pop("random_init"),
        "arch": options.pop("arch"),
        "small_stem": options.pop("small_stem"),
        "init_seed": options.pop("init_seed"),
        "encoder": options.pop("encoder"),
        "prefix": options.pop("prefix"),
        "trust_checkpoint": options.pop("trust_checkpoint"),
    }


def split_data(options: dict) -> EvalData:
    quiet = options.pop("quiet")
    fields = {k: options.pop(k) for k in list(options) if k in EvalData.__dataclass_fields__}
    return EvalData(progress=not quiet, **fields)


def parse_list(text: str, kind, name: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list, got {text!r}", param_hint=name) from None
    if not values:
        raise click.BadParameter("give at least one value", param_hint=name)
    return values
