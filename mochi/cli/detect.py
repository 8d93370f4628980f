"""``mochi detect``: fine-tune Detectron2 from a checkpoint's backbone, once per seed; write records."""

from __future__ import annotations

import re

import click

from mochi.cli.options import comma_ints
from mochi.constants import NORM_CHOICES
from mochi.errors import ConfigError

#: DetectionConfig fields whose option is not ``--field-name``.
FLAGS = {
    "checkpoint": "CHECKPOINT",
    "overrides": "OVERRIDES",
    "results_dir": "--results",
    "verbose": "--quiet",
}


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _with_flags(err: ConfigError) -> str:
    """``err``'s message in the options' names: its field where the message starts with it, and every
    field name with an underscore (``num_gpus``) wherever it stands."""
    from dataclasses import fields

    from mochi.eval.detection import DetectionConfig

    message = err.message
    if re.match(rf"{re.escape(err.field)}\b", message):
        message = _flag(err.field) + message[len(err.field) :]
    for f in fields(DetectionConfig):
        if "_" in f.name:
            message = re.sub(rf"\b{f.name}\b", _flag(f.name), message)
    return message


@click.command("detect", context_settings={"ignore_unknown_options": True})
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--config", required=True, help="Shipped config name (voc07_R50_C4_24k, coco_R50_C4_1x, "
              "coco_R50_C4_2x, coco_R50_FPN_1x, smoke_R50_C4) or a Detectron2 yaml file.")  # fmt: skip
@click.option("--seeds", default="0", callback=comma_ints, help="Comma-separated seeds, one fine-tune each.")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True,
              help="Run directory: seed<k>/ (Detectron2 output), backbone.pkl, records.")  # fmt: skip
@click.option("--results", type=click.Path(file_okay=False), default=None,
              help="Where the result records go [default: OUTPUT/results].")  # fmt: skip
@click.option("--train", "train", multiple=True,
              help="Training data instead of the config's: a Detectron2 dataset name, ANN.json[:IMAGES] "
              "(COCO) or VOCDIR[:SPLIT] (VOC layout). Repeatable.")  # fmt: skip
@click.option("--test", "test", default=None, help="Test data instead of the config's (same forms).")
@click.option("--classes", default=None, help="VOC-layout data: comma-separated class names "
              "[default: DIR/class_names.txt].")  # fmt: skip
@click.option("--norm", type=click.Choice(NORM_CHOICES), default="auto",
              help="auto: SyncBN/naiveSyncBN become BN with one process; config: as the config says; "
              "or force one type everywhere.")  # fmt: skip
@click.option(
    "--num-gpus", type=int, default=None, help="GPUs per machine [default: 1 with CUDA, else 0 = CPU]."
)
@click.option("--num-machines", type=int, default=1)
@click.option("--machine-rank", type=int, default=0)
@click.option("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 when --num-machines > 1.")
@click.option(
    "--encoder", default=None, help="Which encoder of the checkpoint (query/key, ...) [default: query]."
)
@click.option("--trust-checkpoint", is_flag=True, help="Allow arbitrary unpickling of a trusted checkpoint.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings from Detectron2.")
def detect_cmd(checkpoint, overrides, config, seeds, output, results, train, test, classes, norm, num_gpus,
               num_machines, machine_rank, dist_url, encoder, trust_checkpoint, quiet) -> None:  # fmt: skip
    """Fine-tune and evaluate a detector from CHECKPOINT once per seed (OVERRIDES: Detectron2 KEY VALUE).

    \b
    mochi detect ckpt.pth --config voc07_R50_C4_24k --seeds 0,1,2,3,4 -o runs/voc
    mochi detect ckpt.pth --config smoke_R50_C4 -o runs/smoke \\
        --train ann.json --test ann.json MODEL.MASK_ON True
    """
    from mochi.eval.detection import DetectionConfig, run_detection
    from mochi.eval.detection_metrics import format_aggregate

    try:
        run = run_detection(
            DetectionConfig(
                checkpoint, config=config, output=output, seeds=seeds, results_dir=results, train=train,
                test=[test] if test else [], classes=classes.split(",") if classes else None, norm=norm,
                num_gpus=num_gpus, num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url,
                overrides=overrides, encoder=encoder, trust_checkpoint=trust_checkpoint, verbose=not quiet,
            )
        )  # fmt: skip
    except ConfigError as err:
        raise click.ClickException(_with_flags(err)) from None
    if machine_rank != 0:
        return
    if run.skipped_seeds:
        click.echo(f"already finished (not rerun): seeds {', '.join(map(str, run.skipped_seeds))}")
    click.echo(f"{run.aggregate['protocol']}: {len(run.seeds)} seeds, mean ± sample std")
    click.echo(format_aggregate(run.aggregate["metrics"]))
    for path in run.written:
        click.echo(f"wrote {path}")
