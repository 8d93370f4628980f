"""``mochi analyze``: alignment and uniformity of each checkpoint's embeddings; one record per embedding."""

from __future__ import annotations

import click

from mochi.cli.options import DATA_FLAGS, Command, backbone_options, field_options, flag, take
from mochi.constants import AUGMENTATIONS
from mochi.eval.config import DEVICES, AnalysisConfig, BackboneSpec

ANALYSIS_FLAGS = {
    "split": flag("--split", help="Split measured (the pretraining split)."),
    "limit": flag("--limit", help="Images in the fixed random subset."),
    "seed": flag("--seed", help="Seed of the subset and of the two augmented views."),
    "alpha": flag("--alpha", help="Alignment exponent α."),
    "t": flag("-t", "--t", help="Uniformity temperature t."),
    "aug": flag(
        "--aug", choices=AUGMENTATIONS, default_text="the checkpoint's, else aug-plus",
        help="Pretraining augmentation drawing the two views.",
    ),
    "image_size": flag(
        "--image-size", default_text="the checkpoint's, else 224", help="Crop size of the two views."
    ),
    "batch_size": flag("-b", "--batch-size", help="Images per forward pass."),
    "device": flag("--device", choices=DEVICES),
}  # fmt: skip


@click.command("analyze", cls=Command)
@click.argument("checkpoints", nargs=-1)
@backbone_options()
@click.option("--data", default="fashion-mnist", help=DATA_FLAGS["data"].help)
@click.option("--data-root", default=None, help=DATA_FLAGS["data_root"].help)
@click.option("--subset", default=None, help=DATA_FLAGS["subset"].help)
@field_options(AnalysisConfig, ANALYSIS_FLAGS)
@click.option("-o", "--results", default="results", help="Results folder: one JSON record per embedding.")
def analyze_cmd(checkpoints: tuple[str, ...], data: str, data_root, subset, results: str, **options) -> None:
    """Alignment and uniformity (Wang & Isola 2020) of each CHECKPOINT (or --random-init).

    Two views of each image of a fixed seeded subset, drawn with the pretraining augmentation; measured on
    the pooled backbone features and, when the checkpoint holds it, MoCo's projection head. Lower is
    better for both. Records are written once every checkpoint is measured.

    \b
    Examples:
      mochi analyze runs/main/pretrain/moco-v2/checkpoint_*.pth.tar --data fashion-mnist-embedded \\
          -o runs/analysis
      mochi analyze --random-init -a resnet18 --small-stem --data fashion-mnist-embedded --image-size 32 \\
          --aug aug-plus-small -o runs/analysis
    """
    import logging
    from pathlib import Path

    from mochi.errors import MochiError
    from mochi.eval.analysis import analyze
    from mochi.eval.config import check_analysis, check_backbone
    from mochi.eval.data import open_split
    from mochi.eval.records import write_records

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = take(BackboneSpec, options)
    config = take(AnalysisConfig, options)
    check_backbone(spec)
    check_analysis(config)
    if bool(checkpoints) == spec.random_init:
        raise MochiError("pass checkpoint paths or --random-init (with --arch), not both and not neither")
    for path in checkpoints:  # every path before any image is read: a typo costs nothing
        if not Path(path).is_file():
            raise MochiError(f"checkpoint not found: {path}. Pass the path of a checkpoint file")
    dataset = open_split(data, config.split, root=data_root, subset=subset)
    records = []
    for path in checkpoints or (None,):
        spec.checkpoint = path
        records += analyze(spec, config, data, dataset=dataset)
    for r in records:
        m, embedding = r["metrics"], r["hyperparameters"]["embedding"]
        click.echo(
            f"{r['evaluated']['label']}  {embedding:<8}  align {m['align']:.4f}  uniform {m['uniform']:.4f}"
        )
    for path in write_records(results, records):
        click.echo(f"record: {path}")
