"""``mochi results``: list the result records of a folder as a table."""

from __future__ import annotations

import click


@click.command("results")
@click.argument("results_dir")
@click.option("--task", default=None, help="Only records of this task (knn, linear, detection...).")
@click.option(
    "--metrics",
    default="",
    help="Comma-separated metric columns, or 'all'. Default: top1,top5 for kNN / linear, AP,AP50,AP75 "
    "(and mask AP) for detection, as the records present have them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the records as a JSON list instead.")
def results_cmd(results_dir: str, task: str | None, metrics: str, as_json: bool) -> None:
    """List the records in RESULTS_DIR (oldest first), one row each.

    \b
    Example:
      mochi results runs/main/suites/fashion-mnist/results --task knn
    """
    import json

    from mochi.eval.records import all_metrics, format_table, load_records

    records = load_records(results_dir)
    if task:
        records = [r for r in records if r["task"] == task]
    if as_json:
        click.echo(json.dumps(records, indent=2, sort_keys=True))
        return
    if not records:
        click.echo(f"no records in {results_dir}")
        return
    cols = [m.strip() for m in metrics.split(",") if m.strip()] or None
    if cols == ["all"]:
        cols = all_metrics(records)
    click.echo(format_table(records, cols))
