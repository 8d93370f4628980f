"""``mochi knn``: weighted kNN on frozen features, every k and T from one search; writes one record."""

from __future__ import annotations

import logging

import click

from mochi.cli.eval_options import backbone_options, data_options, parse_list, split_backbone, split_data


@click.command("knn")
@backbone_options
@data_options
@click.option("-k", "--k", "ks", default="10,20,100,200", help="Comma-separated numbers of neighbours.")
@click.option(
    "-t", "--temperature", "temperatures", default="0.07", help="Comma-separated vote temperatures T."
)
@click.option(
    "--backend", default="faiss", type=click.Choice(["faiss", "torch"]),
    help="faiss: exact inner-product index (GPU build used when present); torch: chunked matrix products.",
)  # fmt: skip
def knn_cmd(ks: str, temperatures: str, backend: str, **options) -> None:
    """kNN top-1 / top-5 of CHECKPOINT (or --random-init) with the InstDisc weighted vote.

    \b
    Examples:
      mochi knn runs/moco/checkpoint_0005.pth.tar --data fashion-mnist-embedded --image-size 32
      mochi knn --random-init -a resnet18 --data fashion-mnist-embedded --image-size 32
      mochi knn ckpt.pth.tar --data /data/imagenet --test-split val -k 20,200 -t 0.07,0.1
    """
    from mochi.eval.backbones import BackboneSpec
    from mochi.eval.evaluate import evaluate_knn
    from mochi.eval.knn import KnnConfig, setting_name
    from mochi.eval.records import write_records

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    k_list = parse_list(ks, int, "--k")
    t_list = parse_list(temperatures, float, "--temperature")
    results = options.pop("results")
    config = KnnConfig(ks=tuple(k_list), temperatures=tuple(t_list), backend=backend)
    records = evaluate_knn(BackboneSpec(**split_backbone(options)), split_data(options), config)
    if not records:  # a non-zero rank under torchrun
        return
    record = records[0]
    (path,) = write_records(results, records)
    settings = record["metrics"]["settings"]
    for k in sorted(set(k_list)):
        for t in t_list:
            m = settings[setting_name(k, t)]
            top5 = "n/a" if m["top5"] is None else f"{m['top5']:.2f}"
            click.echo(
                f"k={k:<4} T={t:<6g} top1 {m['top1']:6.2f}  top5 {top5:>6}  "
                f"mean/class {m['mean_per_class']:.2f}"
            )
    click.echo(f"record: {path}")
