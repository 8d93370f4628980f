"""``mochi export``: a checkpoint's backbone as a torchvision state dict or a Detectron2 .pkl."""

from __future__ import annotations

import click

from mochi.cli.options import CHECKPOINT_FIELDS, Command, backbone_options
from mochi.constants import EXPORT_TARGETS


@click.command("export", cls=Command)
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(EXPORT_TARGETS), required=True, help="Output layout.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    required=True,
    help="Output file (.pkl for detectron2).",
)
@backbone_options(CHECKPOINT_FIELDS)
@click.option(
    "--keep-head", is_flag=True, help="detectron2: keep the fc / projector head (as stem.fc.* etc.)."
)
@click.option(
    "--author", default=None, help="detectron2: __author__ string [default: names the source file]."
)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def export_cmd(
    checkpoint, to, output, encoder, prefix, arch, stem, trust_checkpoint, keep_head, author, force
) -> None:
    """Write CHECKPOINT's ResNet backbone for torchvision or Detectron2, after a strict load check."""
    from mochi.transfer.export import export_backbone

    report = export_backbone(
        checkpoint,
        output,
        to=to,
        encoder=encoder,
        prefix=prefix,
        arch=arch,
        stem=stem,
        keep_head=keep_head,
        trust_checkpoint=trust_checkpoint,
        force=force,
        author=author,
    )
    click.echo(report.to_text())
    if to == "torchvision":
        builder = (
            f"mochi.transfer.build_torchvision_resnet({report.arch!r}, small_stem=True"
            + (", stem_padding=2)" if report.stem_padding == 2 else ")")
            if report.small_stem
            else f"torchvision.models.{report.arch}()"
        )
        click.echo(
            f"wrote {output}: load with {builder}.load_state_dict(sd, strict=False) (only fc.* missing)"
        )
    else:
        click.echo(
            f"wrote {output}: Detectron2 weights (MODEL.WEIGHTS); for these torchvision-style weights set "
            "INPUT.FORMAT RGB, PIXEL_MEAN [123.675, 116.28, 103.53], PIXEL_STD [58.395, 57.12, 57.375], "
            "RESNETS.STRIDE_IN_1X1 False"
        )
