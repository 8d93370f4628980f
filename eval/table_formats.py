"""A :class:`~mochi.eval.tables.Table` as text: Markdown (READMEs), CSV (spreadsheets), LaTeX (papers), JSON.

Measured cells read ``mean ± std (n=k)`` (no ± for a single seed); published rows are marked ``†`` with
their source below the table (Markdown, LaTeX) or in a ``published`` / ``source`` field (CSV, JSON).
CSV and JSON keep full precision; Markdown and LaTeX round to ``digits`` decimals.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict

from tabulate import tabulate

from mochi.errors import MochiError

from .tables import FORMATS, LOWER_IS_BETTER, METRIC_LABELS, UNIT_SCALE, Cell, Column, Table

DAGGER = "†"
LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$",
    "↓": r"$\downarrow$",
}  # fmt: skip


def _text(cell: Cell | None, digits: int, pm: str = "±") -> str:
    if cell is None:
        return ""
    out = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        out += f" {pm} {cell.std:.{digits}f}"
    if cell.n is not None and cell.n > 1:
        out += f" (n={cell.n})"
    return out


def _footnotes(table: Table) -> list[str]:
    return [f"{DAGGER} {row.label}: published; {row.source}" for row in table.rows if row.published]


def _digits(column: Column, digits: int) -> int:
    # Alignment / uniformity are unit-scale numbers (0.42, -3.1), not percentages: two more decimals.
    return digits + 2 if column.metric in UNIT_SCALE else digits


def to_markdown(table: Table, digits: int = 1) -> str:
    """A pipe table, one column per metric column; published rows marked, sources below."""
    headers = ["backbone", *(c.label for c in table.columns)]
    body = [
        [
            row.label + (f" {DAGGER}" if row.published else ""),
            *(_text(row.cells.get(c.label), _digits(c, digits)) for c in table.columns),
        ]
        for row in table.rows
    ]
    text = tabulate(body, headers, tablefmt="pipe", disable_numparse=True)
    notes = _footnotes(table)
    return text + ("\n\n" + "\n\n".join(notes) if notes else "") + "\n"


def to_csv(table: Table) -> str:
    """One line per row: backbone, sha256 prefix, published, source, then mean, std, n of each column."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["backbone", "sha256", "published", "source"]
    for c in table.columns:
        header += [f"{c.label} mean", f"{c.label} std", f"{c.label} n"]
    writer.writerow(header)
    for row in table.rows:
        line = [row.label, row.sha256 or "", "yes" if row.published else "no", row.source or ""]
        for c in table.columns:
            cell = row.cells.get(c.label)
            if cell is None:
                line += ["", "", ""]
            else:
                line += [repr(cell.mean), "" if cell.std is None else repr(cell.std), cell.n or ""]
        writer.writerow(line)
    return out.getvalue()


def to_json(table: Table) -> str:
    """``{"columns": [...], "rows": [{"label", "sha256", "published", "source", "cells": {label: cell}}],
    "notes": [...]}``; a cell is ``{"mean", "std", "n", "values"}``."""
    return json.dumps(asdict(table), indent=2) + "\n"


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def _best(table: Table) -> dict[str, float]:
    """Column label -> the best mean among measured rows (the highest; the lowest for
    :data:`~mochi.eval.tables.LOWER_IS_BETTER` metrics), where at least two measured rows compete."""
    best = {}
    for c in table.columns:
        means = [r.cells[c.label].mean for r in table.rows if not r.published and c.label in r.cells]
        if len(means) >= 2:
            best[c.label] = min(means) if c.metric in LOWER_IS_BETTER else max(means)
    return best


def to_latex(table: Table, digits: int = 1) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``): a header row per column group with
    ``\\cmidrule``, the metric row, measured rows with the best mean of each column in bold (the highest;
    the lowest for alignment and uniformity), then published rows (``$^\\dagger$``, never bold); their
    sources follow the tabular."""
    cols = table.columns
    best = _best(table)
    lines = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule"]
    groups: list[tuple[str, int]] = []  # (group text, span), consecutive columns sharing group + variant
    for c in cols:
        name = c.group + (f" [{c.variant}]" if c.variant else "")
        if groups and groups[-1][0] == name:
            groups[-1] = (name, groups[-1][1] + 1)
        else:
            groups.append((name, 1))
    head, rules, start = [""], [], 2
    for name, span in groups:
        head.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(name)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines += [" & ".join(head) + r" \\", " ".join(rules)]
    lines.append(
        " & ".join(["backbone", *(latex_escape(METRIC_LABELS.get(c.metric, c.metric)) for c in cols)])
        + r" \\"
    )
    lines.append(r"\midrule")
    measured = [r for r in table.rows if not r.published]
    published = [r for r in table.rows if r.published]
    for row in measured:
        cells = []
        for c in cols:
            cell = row.cells.get(c.label)
            text = latex_escape(_text(cell, _digits(c, digits)))
            if cell is not None and c.label in best and round(cell.mean, 9) == round(best[c.label], 9):
                text = rf"\textbf{{{text}}}"
            cells.append(text)
        lines.append(" & ".join([latex_escape(row.label), *cells]) + r" \\")
    if published:
        lines.append(r"\midrule")
        for row in published:
            cells = [latex_escape(_text(row.cells.get(c.label), _digits(c, digits))) for c in cols]
            lines.append(" & ".join([latex_escape(row.label) + r"$^\dagger$", *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    # Sources under the table, where they wrap with the text (a tabular cell would not).
    lines += [rf"\par{{\footnotesize {latex_escape(note)}}}" for note in _footnotes(table)]
    return "\n".join(lines) + "\n"


def render(table: Table, fmt: str, digits: int = 1) -> str:
    """``table`` as ``fmt`` (one of :data:`~mochi.eval.tables.FORMATS`)."""
    if fmt == "md":
        return to_markdown(table, digits)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "latex":
        return to_latex(table, digits)
    if fmt == "json":
        return to_json(table)
    raise MochiError(f"unknown table format {fmt!r}: use one of {', '.join(FORMATS)}")
