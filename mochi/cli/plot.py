"""``mochi plot``: pictures of pretraining runs and evaluation records (PNG, SVG, PDF)."""

from __future__ import annotations

import click

OUTPUT_HELP = (
    "Where to write: a path without suffix gets one file per --format (plots/curves -> plots/curves.png, "
    "plots/curves.svg); a .png / .svg / .pdf suffix alone writes that format."
)
FORMAT_HELP = "Comma-separated image formats: png, svg, pdf.  [default: png,svg, or the suffix of -o]"


def _formats(value: str | None) -> list[str] | None:
    return [f for f in value.split(",") if f.strip()] if value else None


def _echo(paths) -> None:
    for path in paths:
        click.echo(f"wrote {path}")


@click.group("plot")
def plot_cmd() -> None:
    """Draw training curves, kNN top-1 against k, table dot plots, or alignment against uniformity."""


@plot_cmd.command("curves")
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help=OUTPUT_HELP)
@click.option("--format", "formats", default=None, show_default=False, help=FORMAT_HELP)
def curves_cmd(run_dirs: tuple[str, ...], output: str, formats: str | None) -> None:
    """Training curves of RUN_DIRS side by side, from each run's metrics.jsonl.

    One panel per quantity (loss, proxy-task top-1, lr, images/s; for MoCHi the hardest-negative and
    synthetic similarities), one line per run, a dashed line where a MoCHi run starts mixing.

    \b
    Example:
      mochi plot curves runs/main/pretrain/moco-v2 runs/main/pretrain/mochi-512-512-128 \\
          -o runs/main/plots/curves
    """
    from mochi.eval.plots import load_run, output_paths, save_figure, training_curves

    output_paths(output, _formats(formats))  # a bad --format is refused before any file is read
    fig = training_curves([load_run(d) for d in run_dirs])
    _echo(save_figure(fig, output, _formats(formats)))


@plot_cmd.command("knn")
@click.argument("results_dirs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help=OUTPUT_HELP)
@click.option("--format", "formats", default=None, show_default=False, help=FORMAT_HELP)
@click.option(
    "--rows", type=click.Choice(["backbone", "method"]), default="backbone",
    help="One line per backbone, or per pretraining recipe (its seeds pooled; see mochi table --rows).",
)  # fmt: skip
def knn_cmd(results_dirs: tuple[str, ...], output: str, formats: str | None, rows: str) -> None:
    """kNN top-1 against k from the kNN records in RESULTS_DIRS, one line per backbone and T.

    Several seeds of one setting are averaged, with ± one standard deviation as error bars; of repeated
    evaluations of one seed the newest counts.

    \b
    Example:
      mochi plot knn runs/main/suites/fashion-mnist/results -o runs/main/plots/knn
      mochi plot knn runs/study/suites/fashion-mnist/results --rows method -o runs/study/plots/knn
    """
    from mochi.eval.plots import knn_curve, output_paths, save_figure
    from mochi.eval.records import load_records

    output_paths(output, _formats(formats))
    records = [r for d in results_dirs for r in load_records(d)]
    _echo(save_figure(knn_curve(records, rows), output, _formats(formats)))


@plot_cmd.command("table")
@click.argument("results_dirs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help=OUTPUT_HELP)
@click.option("--format", "formats", default=None, show_default=False, help=FORMAT_HELP)
@click.option("--columns", default=None, help="Only the table columns whose label contains this text.")
@click.option(
    "--reference", default=None, help="Add the published rows of this table (e.g. moco), as hollow dots."
)
@click.option(
    "--rows", type=click.Choice(["backbone", "method"]), default="backbone",
    help="One line per backbone, or per pretraining recipe (its seeds pooled; see mochi table --rows).",
)  # fmt: skip
def table_cmd(
    results_dirs: tuple[str, ...],
    output: str,
    formats: str | None,
    columns: str | None,
    reference: str | None,
    rows: str,
) -> None:
    """The columns of `mochi table RESULTS_DIRS` as dot plots: per backbone, its mean ± std and every seed.

    Each panel's axis spans its column's numbers (not zero to the top), so rows a point apart stay apart.

    \b
    Example:
      mochi plot table runs/main/suites/fashion-mnist/results --columns lbfgs -o runs/main/plots/lbfgs
    """
    from mochi.errors import MochiError
    from mochi.eval.plots import output_paths, save_figure, table_dots
    from mochi.eval.records import load_records
    from mochi.eval.tables import build_table

    output_paths(output, _formats(formats))
    records = {r["id"]: r for d in results_dirs for r in load_records(d)}
    if not records:
        raise MochiError(f"no result records in {', '.join(results_dirs)}: pass a results folder")
    ordered = sorted(records.values(), key=lambda r: (r["created"], r["id"]))
    table = build_table(ordered, rows=rows, reference=reference)
    _echo(save_figure(table_dots(table, columns), output, _formats(formats)))


@plot_cmd.command("align")
@click.argument("results_dirs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help=OUTPUT_HELP)
@click.option("--format", "formats", default=None, show_default=False, help=FORMAT_HELP)
@click.option("--trajectory", is_flag=True, help="Join each run's checkpoints in epoch order.")
def align_cmd(results_dirs: tuple[str, ...], output: str, formats: str | None, trajectory: bool) -> None:
    """Alignment against uniformity from the `mochi analyze` records in RESULTS_DIRS (lower-left is better).

    One panel per embedding (backbone features, projection head), one point per checkpoint, one colour
    per run (the checkpoint's folder); seeds of one setting are averaged.

    \b
    Example:
      mochi analyze runs/main/pretrain/moco-v2/checkpoint_*.pth.tar \\
          runs/main/pretrain/mochi-512-512-128/checkpoint_*.pth.tar --data fashion-mnist-embedded \\
          -o runs/main/analysis
      mochi plot align runs/main/analysis --trajectory -o runs/main/plots/align
    """
    from mochi.eval.plots import alignment_uniformity, output_paths, save_figure
    from mochi.eval.records import load_records

    output_paths(output, _formats(formats))
    records = [r for d in results_dirs for r in load_records(d)]
    _echo(save_figure(alignment_uniformity(records, trajectory), output, _formats(formats)))
