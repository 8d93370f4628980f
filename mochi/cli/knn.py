"""``mochi knn``: weighted kNN on frozen features, every k and T from one search; writes one record."""

from __future__ import annotations

import logging

import click

from mochi.cli.options import Command, backbone_options, data_options, field_options, flag, take, take_data
from mochi.eval.config import BACKENDS, BackboneSpec, KnnConfig

KNN_FLAGS = {
    "ks": flag("-k", "--k", help="Comma-separated numbers of neighbours."),
    "temperatures": flag("-t", "--temperature", help="Comma-separated vote temperatures T."),
    "backend": flag(
        "--backend", choices=BACKENDS,
        help="faiss: exact inner-product index (GPU build used when present); "
        "torch: chunked matrix products.",
    ),
}  # fmt: skip


@click.command("knn", cls=Command)
@click.argument("checkpoint", required=False)
@backbone_options()
@data_options
@field_options(KnnConfig, KNN_FLAGS)
def knn_cmd(**options) -> None:
    """kNN top-1 / top-5 of CHECKPOINT (or --random-init) with the InstDisc weighted vote.

    \b
    Examples:
      mochi knn runs/moco/checkpoint_0005.pth.tar --data fashion-mnist-embedded --image-size 32
      mochi knn --random-init -a resnet18 --data fashion-mnist-embedded --image-size 32
      mochi knn ckpt.pth.tar --data /data/imagenet --test-split val -k 20,200 -t 0.07,0.1
    """
    from mochi.eval.evaluate import evaluate_knn
    from mochi.eval.knn import setting_name
    from mochi.eval.records import write_records

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = options.pop("results")
    config = take(KnnConfig, options)
    records = evaluate_knn(take(BackboneSpec, options), take_data(options), config)
    if not records:  # a non-zero rank under torchrun
        return
    record = records[0]
    (path,) = write_records(results, records)
    settings = record["metrics"]["settings"]
    for k in record["hyperparameters"]["k"]:  # the k searched: the default list may have been trimmed
        for t in config.temperatures:
            m = settings[setting_name(k, t)]
            top5 = "n/a" if m["top5"] is None else f"{m['top5']:.2f}"
            click.echo(
                f"k={k:<4} T={t:<6g} top1 {m['top1']:6.2f}  top5 {top5:>6}  "
                f"mean/class {m['mean_per_class']:.2f}"
            )
    click.echo(f"record: {path}")
