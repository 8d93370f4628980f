"""Options shared by the subcommands that read a backbone checkpoint (export, inspect)."""

from __future__ import annotations

import click

from mochi.resnet import ARCHS
from mochi.transfer.formats import ENCODERS


def checkpoint_options(f):
    """--encoder, --prefix, --arch, --trust-checkpoint."""
    options = [
        click.option(
            "--encoder",
            type=click.Choice(ENCODERS),
            default=None,
            help="Which network: query/key (MoCo-style online/momentum pair; default query), "
            "teacher/student (DINO; default teacher).",
        ),
        click.option(
            "--prefix",
            default=None,
            help="Backbone key prefix, overriding detection (e.g. module.encoder_q.).",
        ),
        click.option(
            "--arch",
            type=click.Choice(list(ARCHS)),
            default=None,
            help="Assert the architecture [default: inferred].",
        ),
        click.option(
            "--trust-checkpoint",
            is_flag=True,
            help="Allow arbitrary unpickling (can run code from the file): "
            "only for files from a trusted source.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f
