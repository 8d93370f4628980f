"""``mochi inspect``: what a checkpoint holds, where its backbone is, and whether it loads cleanly."""

from __future__ import annotations

import json

import click

from mochi.cli.options import CHECKPOINT_FIELDS, Command, backbone_options
from mochi.errors import MochiError


@click.command("inspect", cls=Command)
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@backbone_options(CHECKPOINT_FIELDS)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(checkpoint, encoder, prefix, arch, stem, trust_checkpoint, as_json) -> None:
    """Report CHECKPOINT's format, prefix, encoder, architecture and tensors (exit 1 if it does not load)."""
    from mochi.transfer.backbone import inspect_checkpoint

    _, _, report = inspect_checkpoint(
        checkpoint, encoder=encoder, prefix=prefix, arch=arch, stem=stem, trust_checkpoint=trust_checkpoint
    )
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())
    if not report.ok:
        raise MochiError(f"{checkpoint} does not load cleanly: {'; '.join(report.problems())}")
