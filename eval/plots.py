"""Pictures of runs and records: training curves from ``metrics.jsonl``; kNN top-1 against k, table columns
as dot plots and alignment against uniformity, from records.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: drawing here
switches no backend and leaves no current figure behind in a program that imports this module, and works
on a machine without a display. Every figure is drawn from files a run or an evaluation wrote (the numbers
are never typed), and the data behind each line is kept so a test can compare it with its source:
:func:`load_run`, :func:`knn_series` and :func:`align_points` return what :func:`training_curves`,
:func:`knn_curve` and :func:`alignment_uniformity` draw.
:func:`save_figure` writes PNG / SVG / PDF atomically.

Longer than ~400 lines: four kinds of figure share the record grouping and the one atomic writer here.
"""

from __future__ import annotations

import io
import math
import re
import statistics
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mochi.errors import MochiError
from mochi.io import atomic_open, read_jsonl, write_problem

from .records import backbone_label, method_label, seed_of, setting_key
from .tables import ROWS, Table, row_key, setting_without_backbone

# The quantities of a step record of ``metrics.jsonl`` that get a panel, in order, with their titles; keys
# that share a title share a panel (one line style per key). ``hard_sim`` / ``synthetic_sim`` and the
# ``syn_*`` fractions are written by MoCHi runs once mixing has started, the false-negative rates by runs on
# labelled data (docs/protocols.md#negatives-during-pretraining).
FN_TITLE = "false-negative rate: — N hardest, ··· whole queue"
SYN_TITLE = "synthetic share: — harder than hardest neg., ··· from false neg."
QUANTITIES: tuple[tuple[str, str], ...] = (
    ("loss", "loss (InfoNCE)"),
    ("top1", "proxy-task top-1 (positive is the top logit)"),
    ("lr", "learning rate"),
    ("images_per_s", "images / s"),
    ("hard_sim", "hardest-negative similarity (MoCHi)"),
    ("synthetic_sim", "synthetic-negative similarity (MoCHi)"),
    ("pos_rank", "rank of the positive among all logits (mean)"),
    ("fn_rate_hard", FN_TITLE),
    ("fn_rate_queue", FN_TITLE),
    ("syn_harder", SYN_TITLE),
    ("syn_from_fn", SYN_TITLE),
)
LINE_STYLES = ("-", ":")  # the keys of a shared panel, in QUANTITIES order
FORMATS = ("png", "svg", "pdf")
DEFAULT_FORMATS = ("png", "svg")
MIXING_GID = "mixing-start"  # the gid of the dashed line marking where a run starts mixing


# ---------------------------------------------------------------------------------------------------------
# Training curves


@dataclass
class RunCurves:
    """The step records of one pretraining run, as drawn.

    ``steps``: the ``type == "step"`` rows of ``metrics.jsonl`` in file order; ``mixing_start``: the global
    step after which MoCHi mixing is on (the start of the first mixing epoch), None when the run never mixed.
    """

    name: str
    path: Path
    steps: list[dict[str, Any]]
    mixing_start: int | None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(global steps, values)`` of ``key`` over the step rows that have it."""
        rows = [
            r for r in self.steps if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
        ]
        return [int(r["global_step"]) for r in rows], [float(r[key]) for r in rows]


def load_run(run_dir: str | Path) -> RunCurves:
    """Read ``RUN_DIR/metrics.jsonl`` (a torn last line, from a run still writing or killed, is dropped)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise MochiError(
            f"{run_dir} has no metrics.jsonl: pass a pretraining run directory (the -o of mochi pretrain)"
        )
    rows = [r for r in read_jsonl(path) if isinstance(r, dict)]
    steps = [r for r in rows if r.get("type") == "step" and isinstance(r.get("global_step"), int)]
    if not steps:
        raise MochiError(
            f"{path} holds no step records yet: plot the run once it has logged a step "
            "(--log-every sets how often)"
        )
    first_mixing = next((r for r in steps if r.get("mixing") is True), None)
    # A step record's global step is epoch·steps_per_epoch + step, so this is where its epoch began.
    mixing_start = None if first_mixing is None else int(first_mixing["global_step"] - first_mixing["step"])
    return RunCurves(run_dir.resolve().name or str(run_dir), run_dir, steps, mixing_start)


def _unique_names(runs: Sequence[RunCurves]) -> list[str]:
    # "a/moco" and "b/moco" are told apart by their parent folder.
    names = [r.name for r in runs]
    return [f"{r.path.resolve().parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def series_label(run_name: str, key: str) -> str:
    """The label of a run's line for ``key``: the run's name, with the key in a panel shared by several."""
    shared = sum(title == dict(QUANTITIES)[key] for _, title in QUANTITIES) > 1
    return f"{run_name}: {key}" if shared else run_name


def training_curves(runs: Sequence[str | Path | RunCurves]) -> Figure:
    """One panel per title of :data:`QUANTITIES` that any run logged, one line per run and key (colour
    ``C<i>`` per run, label :func:`series_label`; keys of a shared panel in :data:`LINE_STYLES`) over the
    global step, and a dashed vertical line (gid :data:`MIXING_GID`) where each MoCHi run starts mixing. A
    run without a quantity draws nothing for it."""
    loaded = [r if isinstance(r, RunCurves) else load_run(r) for r in runs]
    if not loaded:
        raise MochiError("no run to plot: pass at least one pretraining run directory")
    names = _unique_names(loaded)
    logged = [(key, title) for key, title in QUANTITIES if any(run.series(key)[0] for run in loaded)]
    panels: dict[str, list[str]] = {}
    for key, title in logged:
        panels.setdefault(title, []).append(key)
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.0 * rows), layout="constrained")
    first = None
    for index, (title, keys) in enumerate(panels.items()):
        # one x range for all panels: the MoCHi similarities, logged once mixing is on, line up with the rest
        ax = fig.add_subplot(rows, cols, index + 1, sharex=first)
        first = first or ax
        for colour, (run, name) in enumerate(zip(loaded, names, strict=True)):
            for key in keys:
                xs, ys = run.series(key)
                if not xs:
                    continue
                # lr is set per epoch: drawn as steps, each value held over the steps that led to its record
                style = "steps-pre" if key == "lr" else "default"
                line = LINE_STYLES[[k for k, t in QUANTITIES if t == title].index(key)]
                ax.plot(
                    xs, ys, color=f"C{colour}", label=series_label(name, key), linewidth=1.4,
                    drawstyle=style, linestyle=line,
                )  # fmt: skip
            if run.mixing_start is not None:
                ax.axvline(
                    run.mixing_start, color=f"C{colour}", linestyle="--", linewidth=1.0,
                    label=f"{name}: mixing starts", gid=MIXING_GID,
                )  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if index == 0:
            _legend(fig, ax, many=len(loaded) > LEGEND_INSIDE)
    return fig


# Up to this many runs or series, the legend sits inside the (first) axes; more go below the figure, where
# they cover no data.
LEGEND_INSIDE = 4


def _legend(fig: Figure, ax, many: bool) -> None:
    if not many:
        ax.legend(fontsize=8)
        return
    handles, labels = ax.get_legend_handles_labels()
    # as many columns as the longest label leaves room for (about 90 characters across the figure)
    ncols = max(1, min(3, 90 // max(len(label) for label in labels)))
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8)


def _colour(index: int, count: int):
    """``C<i>`` for up to ten lines; beyond, tab20's twenty colours, so that no two lines share one."""
    if count <= 10:
        return f"C{index}"
    from matplotlib import colormaps

    return colormaps["tab20"](index % 20)


# ---------------------------------------------------------------------------------------------------------
# kNN top-1 against k

# The names eval.knn.setting_name gives the settings of a record ("k20_T0.07"); parsed here so that drawing
# does not import torch.
_SETTING = re.compile(r"^k(\d+)_T(.+)$")


@dataclass
class KnnSeries:
    """One line of :func:`knn_curve`: a backbone at one temperature T.

    ``top1[i]`` is the mean top-1 (%) at ``ks[i]`` over ``seeds`` records of one setting; ``std[i]`` their
    sample standard deviation (None with one seed).
    """

    label: str
    temperature: float
    ks: list[int]
    top1: list[float]
    std: list[float] | None
    seeds: int


def _backbone_label(record: dict[str, Any]) -> str:
    return backbone_label(record.get("evaluated", {}))


def _when(record: dict[str, Any]) -> tuple[str, str]:
    return (str(record.get("created")), str(record.get("id")))


def _settings(record: dict[str, Any]) -> dict[float, dict[int, float]]:
    """``{T: {k: top1}}`` of one kNN record."""
    out: dict[float, dict[int, float]] = {}
    for name, values in record.get("metrics", {}).get("settings", {}).items():
        m = _SETTING.match(name)
        if m and isinstance(values, dict) and isinstance(values.get("top1"), (int, float)):
            out.setdefault(float(m.group(2)), {})[int(m.group(1))] = float(values["top1"])
    return out


def knn_series(records: Iterable[dict[str, Any]], rows: str = "backbone") -> list[KnnSeries]:
    """The lines of the kNN plot from result records: the ``task == "knn"`` ones, grouped as ``mochi
    table`` groups its cells (:func:`~mochi.eval.tables.row_key` and the setting without the backbone); the
    seeds of a line (:func:`~mochi.eval.records.seed_of`) are averaged, and of repeated evaluations of one
    seed the newest counts. ``rows="method"``: the checkpoints of one pretraining recipe are one line, their
    pretraining seeds pooled, as in ``mochi table --rows method``."""
    if rows not in ROWS:
        raise MochiError(f"unknown rows pivot {rows!r}: use one of {', '.join(ROWS)}")
    method = rows == "method"
    newest: dict[tuple[tuple[str, str], Any], dict[str, Any]] = {}
    for record in records:
        if record.get("task") != "knn" or not _settings(record):
            continue
        # one line per table row and setting, as mochi table pools them
        key = ((row_key(record, rows), setting_without_backbone(record)), seed_of(record, method=method))
        if key not in newest or _when(record) > _when(newest[key]):
            newest[key] = record
    if not newest:
        raise MochiError(
            "no kNN records to plot: evaluate backbones with 'mochi knn ... -o RESULTS_DIR' first"
        )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (setting, _), record in sorted(newest.items(), key=lambda kv: _when(kv[1])):
        groups.setdefault(setting, []).append(record)

    series = []
    datasets = {str(r.get("data", {}).get("dataset")) for r in newest.values()}
    for members in groups.values():
        label = (method and method_label(members[0])) or _backbone_label(members[0])
        if len(datasets) > 1:
            label += f" [{members[0].get('data', {}).get('dataset')}]"
        per_seed = [_settings(r) for r in members]
        for t in sorted(set.intersection(*(set(s) for s in per_seed))):
            ks = sorted(set.intersection(*(set(s[t]) for s in per_seed)))
            values = [[s[t][k] for s in per_seed] for k in ks]
            means = [statistics.fmean(v) for v in values]
            std = None
            if len(members) > 1:
                std = [statistics.stdev(v) for v in values]  # sample std (n - 1)
            series.append(KnnSeries(label, t, ks, means, std, len(members)))
    return series


def knn_curve(
    records_or_series: Iterable[dict[str, Any]] | Sequence[KnnSeries], rows: str = "backbone"
) -> Figure:
    """kNN top-1 (%) against k (log scale), one line per backbone and T (label ``"<backbone> T=<T>"``, plus
    ``"(n seeds)"`` with error bars of ± one sample standard deviation when a setting has several seeds)."""
    items = list(records_or_series)
    series = items if items and isinstance(items[0], KnnSeries) else knn_series(items, rows)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    labels = [
        f"{s.label} T={s.temperature:g}" + (f" ({s.seeds} seeds)" if s.seeds > 1 else "") for s in series
    ]
    for index, (s, label) in enumerate(zip(series, labels, strict=True)):
        colour = _colour(index, len(series))
        ax.plot(s.ks, s.top1, marker="o", color=colour, label=label)
        if s.std is not None:
            # fmt="none": only the bars, so the axes' lines stay one per series
            ax.errorbar(s.ks, s.top1, yerr=s.std, fmt="none", ecolor=colour, capsize=0)
    all_ks = sorted({k for s in series for k in s.ks})
    ax.set_xscale("log")
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.minorticks_off()
    ax.set_xlabel("k (neighbours)")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("kNN top-1 against k (weighted vote)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(fig, ax, many=len(series) > LEGEND_INSIDE)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Dot plots of `mochi table` columns


def _span(values: Sequence[float]) -> tuple[float, float]:
    """The x range of a dot-plot panel: the data with 8 % of its width (at least 0.5 points) either side, so
    that a one-point difference between rows is visible (an axis from zero would squeeze it to a hair)."""
    lo, hi = min(values), max(values)
    pad = max(0.08 * (hi - lo), 0.5)
    return lo - pad, hi + pad


def table_dots(table: Table, columns: str | None = None) -> Figure:
    """One panel per column of ``table`` whose label contains ``columns`` (all when None), one line per row:
    every seed's value as a small grey dot, the cell's mean as a large dot with ± one sample standard
    deviation as an error bar, and ``mean ± std (n=…)`` written beside it. A published row's dot is hollow
    and its label marked ``†``. Each panel's x axis spans its column's numbers (:func:`_span`), not zero to
    the top, so rows a point apart stay apart. The dots and error bars are the cells' numbers
    (``ax.containers``, ``ax.collections``): nothing is recomputed here."""
    chosen = [c for c in table.columns if columns is None or columns.lower() in c.label.lower()]
    if not chosen:
        names = "; ".join(c.label for c in table.columns)
        raise MochiError(f"no table column matches {columns!r}; columns: {names}")
    per_row = min(3, len(chosen))
    n_rows = math.ceil(len(chosen) / per_row)
    fig = Figure(
        figsize=(4.2 * per_row, 0.9 + 0.45 * len(table.rows) * n_rows + 1.2 * n_rows), layout="constrained"
    )
    # one row label per figure row: the panels share the rows, and the labels would squeeze every panel
    axes = fig.subplots(n_rows, per_row, squeeze=False, sharey=True).ravel()
    labels = [r.label + (" †" if r.published else "") for r in table.rows]
    for ax, column in zip(axes, chosen, strict=False):
        cells = [r.cells.get(column.label) for r in table.rows]
        shown = [(i, c) for i, c in enumerate(cells) if c is not None]
        seeds = [(v, i) for i, c in shown if c.n and c.n > 1 for v in c.values]
        if seeds:
            ax.scatter([v for v, _ in seeds], [i for _, i in seeds], s=12, color="0.6", zorder=2)
        for i, cell in shown:
            published = table.rows[i].published
            ax.errorbar(
                [cell.mean], [i], xerr=[[cell.std or 0.0], [cell.std or 0.0]], fmt="o", markersize=7,
                color="C0", mfc="white" if published else "C0", capsize=3, zorder=3,
            )  # fmt: skip
            n = f" (n={cell.n})" if cell.n and cell.n > 1 else ""
            std = f" ± {cell.std:.1f}" if cell.std is not None else ""
            ax.annotate(
                f"{cell.mean:.1f}{std}{n}", (cell.mean, i), xytext=(0, 7), textcoords="offset points",
                ha="center", va="bottom", fontsize=7,
            )  # fmt: skip
        numbers = [c.mean + s for _, c in shown for s in (-(c.std or 0.0), c.std or 0.0)]
        numbers += [v for v, _ in seeds]
        if numbers:
            ax.set_xlim(*_span(numbers))
        ax.set_yticks(range(len(cells)), labels, fontsize=8)
        ax.set_ylim(len(cells) - 0.5, -0.7)  # first row on top; room above it for its label
        ax.set_title(textwrap.fill(column.label, 40), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    if any(r.published for r in table.rows):
        sources = "; ".join(sorted({r.source for r in table.rows if r.published and r.source}))
        fig.suptitle(f"† published: {sources}", fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Alignment against uniformity (mochi analyze records)


@dataclass
class AlignPoint:
    """One point of the alignment-uniformity plot: a backbone's embedding, the mean over its seeds."""

    label: str
    embedding: str  # "backbone" or "head"
    run: str | None  # the checkpoint's folder (its pretraining run); None for a random-init baseline
    order: tuple  # (epoch, step) within the run, from the checkpoint
    uniform: float
    align: float
    seeds: int


def align_points(records: Iterable[dict[str, Any]]) -> list[AlignPoint]:
    """The points of :func:`alignment_uniformity` from the ``task == "analysis"`` records: seeds of one
    setting averaged (of repeated evaluations of one seed the newest counts), each run's in epoch order."""
    newest: dict[tuple[tuple[str, str], Any], dict[str, Any]] = {}
    for r in records:
        if r.get("task") == "analysis":
            key = (setting_key(r), seed_of(r))
            if key not in newest or _when(r) > _when(newest[key]):
                newest[key] = r
    if not newest:
        raise MochiError(
            "no analysis records to plot: measure checkpoints with 'mochi analyze ... -o DIR' first"
        )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (setting, _), r in sorted(newest.items(), key=lambda kv: _when(kv[1])):
        groups.setdefault(setting, []).append(r)
    points = []
    for members in groups.values():
        ev = members[0]["evaluated"]
        ckpt = ev.get("checkpoint")
        points.append(
            AlignPoint(
                _backbone_label(members[0]), members[0]["hyperparameters"].get("embedding", "backbone"),
                str(Path(ckpt).parent) if ckpt else None, (ev.get("epoch", 0), ev.get("step", 0)),
                statistics.fmean(m["metrics"]["uniform"] for m in members),
                statistics.fmean(m["metrics"]["align"] for m in members), len(members),
            )
        )  # fmt: skip
    return sorted(points, key=lambda p: (p.run or "", p.order, p.label))


def alignment_uniformity(records_or_points: Iterable[Any], trajectory: bool = False) -> Figure:
    """The paper-style scatter: x = uniformity, y = alignment (lower-left is better), one panel per
    embedding, one point per backbone labelled with its name, one colour per run; ``trajectory`` joins
    each run's checkpoints in epoch order. Each run's points are one scatter collection (``offsets``)."""
    items = list(records_or_points)
    points = items if items and isinstance(items[0], AlignPoint) else align_points(items)
    embeddings = list(dict.fromkeys(p.embedding for p in points))
    fig = Figure(figsize=(5.2 * len(embeddings), 4.4), layout="constrained")
    runs = list(dict.fromkeys(p.run or p.label for p in points))
    for i, embedding in enumerate(embeddings):
        ax = fig.add_subplot(1, len(embeddings), i + 1)
        for run in runs:
            pts = [p for p in points if p.embedding == embedding and (p.run or p.label) == run]
            if not pts:
                continue
            colour = f"C{runs.index(run) % 10}"
            xs, ys = [p.uniform for p in pts], [p.align for p in pts]
            if trajectory and len(pts) > 1:
                ax.plot(xs, ys, color=colour, alpha=0.5, linewidth=1)
            ax.scatter(xs, ys, color=colour, label=Path(run).name if pts[0].run else run, zorder=3)
            for p in pts:
                ax.annotate(
                    Path(p.label).name,
                    (p.uniform, p.align),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xlabel("uniformity (lower: more uniform)")
        ax.set_ylabel("alignment (lower: views closer)")
        ax.set_title("projection head" if embedding == "head" else "backbone features", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Writing


def output_paths(output: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    """The files :func:`save_figure` writes for ``output``: ``OUT.<format>`` per format. A suffix naming a
    format (``curves.png``) is dropped from the stem and, without ``formats``, is the only format written;
    otherwise ``formats`` defaults to :data:`DEFAULT_FORMATS`."""
    output = Path(output)
    suffix = output.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        output = output.with_suffix("")
        formats = formats or (suffix,)
    formats = tuple(f.strip().lower() for f in (formats or DEFAULT_FORMATS))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise MochiError(
            f"cannot write images as {', '.join(unknown) or 'nothing'}: choose from {', '.join(FORMATS)}"
        )
    return [output.with_name(f"{output.name}.{f}") for f in dict.fromkeys(formats)]


def save_figure(
    fig: Figure, output: str | Path, formats: Sequence[str] | None = None, dpi: int = 100
) -> list[Path]:
    """Write ``fig`` as each of :func:`output_paths`, atomically; returns the paths written.

    Every image is rendered before the first is written, and if a write fails the images this call wrote
    are removed, so a failure leaves no half-updated set of pictures.
    """
    paths = output_paths(output, formats)
    folder = paths[0].parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise MochiError(f"cannot write {paths[0]}: {blocker} is a file, not a folder. Choose another output")
    images = []
    for path in paths:
        buf = io.BytesIO()
        fmt = path.suffix.lstrip(".")
        # No creation date in SVG / PDF: the same data gives the same file.
        metadata = {"Date": None} if fmt in ("svg", "pdf") else None
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata)
        images.append(buf.getvalue())
    written: list[Path] = []
    try:
        for path, data in zip(paths, images, strict=True):
            with atomic_open(path, "wb") as fh:
                fh.write(data)
            written.append(path)
    except OSError as err:
        for path in written:
            path.unlink(missing_ok=True)
        raise MochiError(write_problem(paths[0], err) or f"cannot write {paths[0]}: {err}") from err
    except MochiError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
