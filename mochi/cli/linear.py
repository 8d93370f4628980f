"""``mochi linear``: linear classification on a frozen backbone (moco / sgd-grid / lbfgs); one record.

Each protocol's options are fields of its config dataclass (:mod:`mochi.eval.config`); an option's default
is its protocol's, and an option the chosen protocol does not have is an error.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import click

from mochi.cli.options import (
    Command,
    Flag,
    backbone_options,
    data_options,
    errors_as,
    field_default,
    field_types,
    flag,
    flag_name,
    format_default,
    make_option,
    take,
    take_data,
)
from mochi.eval.config import CONFIGS, PROTOCOLS, BackboneSpec

# Field of the protocol configs -> flags and help (the protocols having the field prefix the help).
LINEAR_FLAGS = {
    "epochs": flag("--epochs", help="training epochs."),
    "lr": flag("--lr", help="learning rate."),
    "lr_steps": flag("--lr-steps", help="epochs where the lr is multiplied by 0.1."),
    # --batch-size is the feature pass's (EvalData.batch_size)
    "batch_size": flag("--linear-batch-size", param="linear_batch_size", help="training batch."),
    "weight_decay": flag("--wd", help="weight decay."),
    "lrs": flag("--lrs", help="learning rates (per 256 images)."),
    "weight_decays": flag("--wds", help="weight decays."),
    "val_fraction": flag("--val-fraction", help="held-out part of the training split."),
    "c_values": flag("--c-values", default_text="10^linspace(-6, 5, 45)", help="C values."),
    "max_iter": flag("--max-iter", help="iterations per fit."),
    "patience": flag(
        "--patience", help="stop the C sweep after this many values without improvement (0: all)."
    ),
    "blas_threads": flag(
        "--blas-threads", help="BLAS threads for the fits (0: auto, one thread for a small problem)."
    ),
    "seed": flag("--seed", help="seed of the held-out split and of training."),
}
PARAMS = {field: spec.param or field for field, spec in LINEAR_FLAGS.items()}


def protocols_of(field: str) -> list[str]:
    return [p for p in PROTOCOLS if field in {f.name for f in dataclasses.fields(CONFIGS[p])}]


def protocol_option(field: str, spec: Flag):
    """``field``'s option for every protocol having it: default None (= the protocol's own default)."""
    protocols = protocols_of(field)
    cls = CONFIGS[protocols[0]]
    defaults = {}
    for p in protocols:
        f = next(f for f in dataclasses.fields(CONFIGS[p]) if f.name == field)
        defaults[p] = None if f.default_factory is not dataclasses.MISSING else field_default(f)
    if spec.default_text is None:
        texts = {p: format_default(v) for p, v in defaults.items()}
        shown = next(iter(texts.values())) if len(set(texts.values())) == 1 else None
        spec = dataclasses.replace(
            spec, default_text=shown or ", ".join(f"{p} {t}" for p, t in texts.items())
        )
    scope = "all protocols" if len(protocols) == len(PROTOCOLS) else " / ".join(protocols)
    spec = dataclasses.replace(spec, help=f"{scope}: {spec.help}")
    return make_option(field, spec, field_types(cls)[field], None)


def protocol_options(f):
    for field, spec in reversed(LINEAR_FLAGS.items()):
        f = protocol_option(field, spec)(f)
    return f


def linear_config(ctx: click.Context, protocol: str, options: dict[str, Any]):
    """The protocol's config: its dataclass defaults, with the options given; others are an error."""
    cls = CONFIGS[protocol]
    names = {f.name for f in dataclasses.fields(cls)}
    given = {field: options.pop(param) for field, param in PARAMS.items()}
    for field, value in given.items():
        if value is not None and field not in names:
            raise click.UsageError(
                f"{flag_name(ctx, field, PARAMS)} applies to --protocol {' / '.join(protocols_of(field))}, "
                f"not {protocol}"
            )
    return cls(**{k: v for k, v in given.items() if v is not None})


@click.command("linear", cls=Command)
@click.argument("checkpoint", required=False)
@backbone_options()
@data_options
@click.option(
    "--protocol", default="sgd-grid", type=click.Choice(PROTOCOLS),
    help="moco: reference (augmented images, lr 30, 100 epochs); sgd-grid / lbfgs: on cached features.",
)  # fmt: skip
@protocol_options
@click.pass_context
def linear_cmd(ctx: click.Context, protocol: str, **options) -> None:
    """Linear top-1 / top-5 of CHECKPOINT (or --random-init); the record names the protocol.

    \b
    Examples:
      mochi linear ckpt.pth.tar --protocol lbfgs --data fashion-mnist-embedded --image-size 32
      mochi linear ckpt.pth.tar --protocol sgd-grid --data /data/imagenet --test-split val
      mochi linear ckpt.pth.tar --protocol moco --data /data/imagenet --test-split val -j 16
    """
    from mochi.eval.config import check_linear
    from mochi.eval.evaluate import evaluate_linear
    from mochi.eval.records import write_records

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = linear_config(ctx, protocol, options)
    with errors_as(ctx, PARAMS):  # the protocol's batch_size is --linear-batch-size
        check_linear(config)
    results = options.pop("results")
    records = evaluate_linear(take(BackboneSpec, options), take_data(options), config)
    if not records:  # a non-zero rank under torchrun
        return
    record = records[0]
    (path,) = write_records(results, records)
    m = record["metrics"]
    top5 = "n/a" if m["top5"] is None else f"{m['top5']:.2f}"
    click.echo(
        f"linear ({protocol}): top1 {m['top1']:.2f}  top5 {top5}  mean/class {m['mean_per_class']:.2f}"
    )
    click.echo(f"record: {path}")
