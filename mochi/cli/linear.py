"""``mochi linear``: linear classification on a frozen backbone (moco / sgd-grid / lbfgs); one record."""

from __future__ import annotations

import logging

import click

from mochi.cli.eval_options import backbone_options, data_options, parse_list, split_backbone, split_data
from mochi.eval.linear import LbfgsConfig, MocoLinearConfig, SgdGridConfig

_M, _S, _L = MocoLinearConfig(), SgdGridConfig(), LbfgsConfig()


def _csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


@click.command("linear")
@backbone_options
@data_options
@click.option(
    "--protocol",
    default="sgd-grid",
    type=click.Choice(["moco", "sgd-grid", "lbfgs"]),
    help="moco: reference (augmented images, lr 30, 100 epochs); sgd-grid / lbfgs: on cached features.",
)
@click.option("--seed", default=0, type=int, help="Seed of the held-out split and of training.")
@click.option(
    "--epochs", default=None, type=int, help=f"Epochs  [default: moco {_M.epochs}, sgd-grid {_S.epochs}]"
)
@click.option("--lr", default=_M.lr, type=float, help="moco: learning rate.")
@click.option("--lr-steps", default=_csv(_M.lr_steps), help="moco: epochs where the lr is multiplied by 0.1.")
@click.option("--linear-batch-size", default=_M.batch_size, type=int, help="moco / sgd-grid: training batch.")
@click.option("--wd", default=_M.weight_decay, type=float, help="moco: weight decay.")
@click.option("--lrs", default=_csv(_S.lrs), help="sgd-grid: learning rates (per 256 images).")
@click.option("--wds", default=_csv(_S.weight_decays), help="sgd-grid: weight decays.")
@click.option("--val-fraction", default=_S.val_fraction, type=float, help="sgd-grid / lbfgs: held-out part.")
@click.option("--c-values", default=None, help="lbfgs: C values  [default: 10^linspace(-6, 5, 45)]")
@click.option("--max-iter", default=_L.max_iter, type=int, help="lbfgs: iterations per fit.")
@click.option(
    "--patience",
    default=_L.patience,
    type=int,
    help="lbfgs: stop the C sweep after this many values without improvement (0: sweep all).",
)
@click.option(
    "--blas-threads", default=_L.blas_threads, type=click.IntRange(min=0),
    help="lbfgs: BLAS threads for the fits (0: auto, one thread for a small problem).",
)  # fmt: skip
def linear_cmd(protocol: str, seed: int, **options) -> None:
    """Linear top-1 / top-5 of CHECKPOINT (or --random-init); the record names the protocol.

    \b
    Examples:
      mochi linear ckpt.pth.tar --protocol lbfgs --data fashion-mnist-embedded --image-size 32
      mochi linear ckpt.pth.tar --protocol sgd-grid --data /data/imagenet --test-split val
      mochi linear ckpt.pth.tar --protocol moco --data /data/imagenet --test-split val -j 16
    """
    from mochi.eval.backbones import BackboneSpec
    from mochi.eval.evaluate import evaluate_linear
    from mochi.eval.records import write_records

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    epochs, batch = options.pop("epochs"), options.pop("linear_batch_size")
    lr, wd = options.pop("lr"), options.pop("wd")
    lr_steps = parse_list(options.pop("lr_steps"), int, "--lr-steps")
    lrs, wds = parse_list(options.pop("lrs"), float, "--lrs"), parse_list(options.pop("wds"), float, "--wds")
    val_fraction, c_values = options.pop("val_fraction"), options.pop("c_values")
    max_iter, patience = options.pop("max_iter"), options.pop("patience")
    blas_threads = options.pop("blas_threads")
    if protocol == "moco":
        config = MocoLinearConfig(
            epochs=epochs or _M.epochs,
            lr=lr,
            weight_decay=wd,
            batch_size=batch,
            lr_steps=tuple(lr_steps),
            seed=seed,
        )
    elif protocol == "sgd-grid":
        config = SgdGridConfig(
            lrs=tuple(lrs), weight_decays=tuple(wds), epochs=epochs or _S.epochs, batch_size=batch,
            val_fraction=val_fraction, seed=seed,
        )  # fmt: skip
    else:
        cs = tuple(parse_list(c_values, float, "--c-values")) if c_values else _L.c_values
        config = LbfgsConfig(
            c_values=cs, max_iter=max_iter, val_fraction=val_fraction, patience=patience,
            blas_threads=blas_threads, seed=seed,
        )  # fmt: skip
    results = options.pop("results")
    records = evaluate_linear(BackboneSpec(**split_backbone(options)), split_data(options), config)
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
