"""``mochi table``: pivot the result records of one or more folders into a transfer table."""

from __future__ import annotations

import click


@click.command("table")
@click.argument("results_dirs", nargs=-1, required=True, metavar="RESULTS_DIR...")
@click.option(
    "--rows",
    default="backbone",
    help="Pivot: 'backbone' = one row per evaluated backbone (checkpoint hash, or random-init arch and "
    "stem), its seeds averaged in each cell; 'method' = one row per pretraining recipe, the checkpoints of "
    "its pretraining seeds averaged too.",
)
@click.option("--format", "fmt", default="md", help="md (Markdown), csv, latex (booktabs) or json.")
@click.option("--reference", default=None, help="Add the published rows of this table (e.g. moco), marked.")
@click.option("--knn", default="headline", help="kNN columns: 'headline' (k=20, T=0.07) or 'all' settings.")
@click.option(
    "--metrics",
    default="",
    show_default=False,
    help="Comma-separated metrics (default: top1; detection: every AP).",
)
@click.option("--digits", default=1, type=click.IntRange(0, 6), help="Decimals in md and latex cells.")
@click.option("-o", "--output", default=None, help="Write the table to this file (atomically) instead.")
def table_cmd(
    results_dirs: tuple[str, ...],
    rows: str,
    fmt: str,
    reference: str | None,
    knn: str,
    metrics: str,
    digits: int,
    output: str | None,
) -> None:
    """Pivot the records of RESULTS_DIR... into a table: one row per backbone, mean ± std over seeds.

    One column per dataset, protocol, setting and metric; a cell is the mean ± sample std (n - 1) over the
    seeds of one setting, with n. Records whose hyper-parameters differ get separate columns, never one mean.

    \b
    Examples:
      mochi table runs/main/suites/fashion-mnist/results
      mochi table runs/voc_moco runs/in1k_results --reference moco --format latex -o table.tex
    """
    from mochi.errors import MochiError
    from mochi.eval.records import load_records
    from mochi.eval.table_formats import render
    from mochi.eval.tables import FORMATS, ROWS, build_table, load_reference
    from mochi.io import atomic_write_text

    if rows not in ROWS:
        raise MochiError(f"--rows {rows!r} is not a pivot mochi knows: use one of {', '.join(ROWS)}")
    if fmt not in FORMATS:
        raise MochiError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    if reference:
        load_reference(reference)  # an unknown name stops here, before any record is read
    records: dict[str, dict] = {}
    for folder in results_dirs:
        for record in load_records(folder):
            records.setdefault(record["id"], record)  # a folder given twice counts once
    if not records:
        raise MochiError(
            f"no result records in {', '.join(results_dirs)}: pass the folder given to -o of "
            "mochi knn / linear / detect"
        )
    wanted = [m.strip() for m in metrics.split(",") if m.strip()] or None
    ordered = sorted(records.values(), key=lambda r: (r["created"], r["id"]))
    table = build_table(ordered, rows=rows, knn=knn, metrics=wanted, reference=reference)
    if not table.columns:
        raise MochiError(f"no metric of {', '.join(results_dirs)} to tabulate: check --metrics {metrics!r}")
    text = render(table, fmt, digits)
    for note in table.notes:
        click.echo(f"note: {note}", err=True)
    if output:
        atomic_write_text(output, text)
        click.echo(f"wrote {output}: {len(table.rows)} rows, {len(table.columns)} columns", err=True)
    else:
        click.echo(text, nl=False)
