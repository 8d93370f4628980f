"""Transfer tables rendered from result records: one row per evaluated backbone (or per pretraining
method, its pretraining seeds averaged), one column per (dataset, protocol, hyper-parameter variant,
metric); Markdown, CSV, LaTeX (booktabs) or JSON.

Pure: records in, text out (no I/O except reading the published tables kept beside this module).

- **Cells.** Records with equal :func:`~mochi.eval.records.setting_key` are seeds of one cell; within a
  cell the newest record of each seed (:func:`~mochi.eval.records.seed_of`) counts, so re-running a suite
  does not count a seed twice. A cell is the mean and **sample** standard deviation (``n - 1``) over its
  seeds, with n; a single seed has no std.
- **Hyper-parameters never mix.** Records of one (dataset, task, protocol) whose settings differ (other
  hyper-parameters, another data subset...) become separate columns, labelled by what differs
  (``[T=0.1]``). The feature dimension follows from the backbone and is not a difference.
- **Rows.** ``rows="backbone"``: one row per evaluated backbone. ``rows="method"``: checkpoints whose
  pretraining configs differ only in the seed and run-only fields
  (:func:`~mochi.eval.records.method_identity`) share a row, so a cell's n counts pretraining seeds times
  evaluation seeds; baselines and foreign checkpoints stay one row each.
- **kNN** columns are one (k, T) setting each: by default each record's headline setting (k=20, T=0.07),
  ``knn="all"`` for every setting. The k and T lists requested do not split columns.
- **Detection**: the per-seed records; an aggregate record counts only when none of its seed records is
  among the records (its per-seed values are then the cell's).
- **Published rows** (``reference=NAME``, ``eval/published/NAME.json``) fill only the columns whose
  dataset, task, protocol and metric match, are marked, carry their source, and never compete for bold.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mochi.errors import MochiError

from .detection_metrics import METRICS as DETECTION_METRICS
from .records import backbone_identity, backbone_label, method_identity, method_label, seed_of, setting_key

PUBLISHED = Path(__file__).parent / "published"
FORMATS = ("md", "csv", "latex", "json")
ROWS = ("backbone", "method")
CLASSIFICATION_METRICS = ("top1",)
METRIC_LABELS = {
    "top1": "top-1", "top5": "top-5", "mean_per_class": "mean/class", "val_top1": "val top-1",
    "mask_AP": "mask AP", "mask_AP50": "mask AP50", "mask_AP75": "mask AP75",
    "align": "align ↓", "uniform": "uniform ↓",
}  # fmt: skip
# Alignment and uniformity (mochi analyze): lower is better, so the label says ↓ and LaTeX bolds the lowest.
ANALYSIS_METRICS = ("align", "uniform")
LOWER_IS_BETTER = frozenset(ANALYSIS_METRICS)
UNIT_SCALE = frozenset(ANALYSIS_METRICS)  # not percentages: Markdown and LaTeX show two more decimals
VOC_ORDER = ("AP50", "AP", "AP75")  # how VOC tables are read (the MoCo papers' order)
TASK_ORDER = {"knn": 0, "linear": 1, "detection": 2, "analysis": 3}
SHA_PREFIX = 12
DATASET_NAMES = {
    "fashion-mnist": "F-MNIST", "fashion-mnist-embedded": "F-MNIST (embedded)", "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100", "stl10": "STL-10",
}  # fmt: skip


@dataclass
class Cell:
    """One table cell: ``mean`` ± ``std`` (sample std, None for one value) over ``n`` seeds."""

    mean: float
    std: float | None
    n: int | None
    values: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Column:
    dataset: str  # short name: "IN-100", "VOC07+12", "F-MNIST (embedded)"
    task: str
    protocol: str
    metric: str  # the record's metric name: top1, AP50, mask_AP...
    group: str  # "F-MNIST (embedded) kNN k=20"
    variant: str  # "" or what sets this column apart from its siblings: "T=0.1"
    label: str  # group [variant] metric label


@dataclass
class Row:
    label: str
    sha256: str | None  # first 12 hex digits of the checkpoint's sha256 (None: random init, published)
    cells: dict[str, Cell]  # column label -> cell
    published: bool = False
    source: str | None = None


@dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


def dataset_name(record: dict[str, Any]) -> str:
    """A dataset's short name as the field writes it (IN-100, VOC07+12, COCO, CIFAR-10...)."""
    data = record.get("data", {})
    name = str(data.get("dataset", "?"))
    if record.get("task", "").startswith("detection"):
        train = name.split(" -> ")[0].split("+")
        years = [m.group(1)[2:] for t in train if (m := re.match(r"voc_(\d{4})", t))]
        if years and len(years) == len(train):
            return "VOC" + "+".join(years)
        if all(t.startswith("coco") for t in train):
            return "COCO"
        return Path(train[0].split(":")[0]).stem or train[0]
    if name in DATASET_NAMES:
        return DATASET_NAMES[name]
    subset = (data.get("train") or {}).get("subset")
    folder = Path(name).name or name
    if subset == "imagenet100":
        return "IN-100"
    if subset:
        return f"{folder} ({Path(str(subset)).stem})"
    return "IN-1k" if re.search(r"imagenet|ilsvrc", folder, re.I) else folder


def _knn_setting(name: str) -> tuple[int, float] | None:
    m = re.fullmatch(r"k(\d+)_T([0-9.eE+-]+)", name or "")
    return (int(m.group(1)), float(m.group(2))) if m else None


def setting_without_backbone(record: dict[str, Any]) -> str:
    """A record's :func:`~mochi.eval.records.setting_key` without its backbone: with :func:`row_key`, the
    table cell (and the kNN plot's line) it belongs to."""
    key = json.loads(setting_key(record))
    key.pop("backbone")
    key["data"].get("features", {}).pop("dim", None)  # follows from the backbone, not a setting
    return json.dumps(key, sort_keys=True)


@dataclass
class _Measurement:
    row: str  # backbone identity (JSON)
    family: tuple  # (dataset, task, protocol, knn setting or "")
    setting: str  # setting key without backbone: equal settings are seeds of one cell
    seed: Any
    values: dict[str, list[float]]  # metric -> values


_DEFAULT_METRICS = {"detection": list(DETECTION_METRICS), "analysis": list(ANALYSIS_METRICS)}


def row_key(record: dict[str, Any], rows: str) -> str:
    """The table row of a record: its backbone's identity, or with ``rows="method"`` its recipe's."""
    ident = method_identity(record) if rows == "method" else backbone_identity(record)
    return json.dumps(ident, sort_keys=True)


def _measurements(
    records: Sequence[dict[str, Any]], knn: str, metrics: Sequence[str] | None, rows: str = "backbone"
):
    ids = {r["id"] for r in records}
    method = rows == "method"
    out = []
    for r in records:
        row = row_key(r, rows)
        task, protocol, ds = r["task"], r["protocol"], dataset_name(r)
        m = r.get("metrics", {})
        if task == "knn":
            names = list(m.get("settings", {})) if knn == "all" else [m.get("headline") or ""]
            hyper = {k: v for k, v in r["hyperparameters"].items() if k not in ("k", "T")}
            for name in names:
                values = m.get("settings", {}).get(name, m)
                keep = metrics or CLASSIFICATION_METRICS
                got = {k: [float(values[k])] for k in keep if isinstance(values.get(k), (int, float))}
                setting = setting_without_backbone({**r, "hyperparameters": {**hyper, "setting": name}})
                out.append(_Measurement(row, (ds, task, protocol, name), setting, seed_of(r, method), got))
        elif task == "detection-aggregate":
            if ids & set(r.get("seed_record_ids", [])):
                continue  # its seeds are here: they are the cell
            keep = metrics or list(DETECTION_METRICS)
            got = {k: [float(v) for v in m[k]["values"]] for k in keep if isinstance(m.get(k), dict)}
            setting = setting_without_backbone({**r, "task": "detection"})
            out.append(_Measurement(row, (ds, "detection", protocol, ""), setting, ("agg", r["id"]), got))
        else:
            keep = metrics or _DEFAULT_METRICS.get(task, CLASSIFICATION_METRICS)
            got = {k: [float(m[k])] for k in keep if isinstance(m.get(k), (int, float))}
            # An analysis record measures one embedding (backbone features or projection head): its group.
            sub = str(r["hyperparameters"].get("embedding", "")) if task == "analysis" else ""
            out.append(
                _Measurement(
                    row, (ds, task, protocol, sub), setting_without_backbone(r), seed_of(r, method), got
                )
            )
    return out


def _flat(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(obj)}


def _variant_labels(settings: Sequence[str]) -> dict[str, str]:
    """Each setting -> ``key=value`` for the keys whose values differ between ``settings``."""
    if len(settings) < 2:
        return dict.fromkeys(settings, "")
    flats = []
    for s in settings:
        key = json.loads(s)
        flats.append(_flat({**key["data"], **key["hyperparameters"], "task": key["task"]}))
    paths = sorted({p for f in flats for p in f})
    differ = [p for p in paths if len({f.get(p) for f in flats}) > 1]
    labels = {}
    for s, f in zip(settings, flats, strict=True):
        parts = [f"{p}={_short(f.get(p, 'unset'))}" for p in differ]
        labels[s] = ", ".join(parts)
    return labels


def _short(value: str) -> str:
    value = value.strip('"')
    return value if len(value) <= 24 else value[:21] + "..."


def _group(family: tuple, n_detection_protocols: int) -> str:
    ds, task, protocol, setting = family
    if task == "knn":
        if _knn_setting(setting) is None:
            return f"{ds} kNN {setting}".rstrip()
        k, t = _knn_setting(setting)
        return f"{ds} kNN k={k}" + ("" if t == 0.07 else f" T={t:g}")
    if task == "linear":
        return f"{ds} linear ({protocol})"
    if task == "detection":
        return ds if n_detection_protocols < 2 else f"{ds} ({protocol})"
    if task == "analysis":
        return f"{ds} {setting or 'backbone'}"
    return f"{ds} {task} ({protocol})"


def _metric_order(task: str, dataset: str, metric: str) -> tuple[int, int]:
    if task == "detection":
        if dataset.startswith("VOC") and metric in VOC_ORDER:
            return (0, VOC_ORDER.index(metric))
        names = list(DETECTION_METRICS)
        return (1, names.index(metric) if metric in names else len(names))
    names = ["top1", "top5", "mean_per_class", "val_top1", *ANALYSIS_METRICS]
    return (0, names.index(metric) if metric in names else len(names))


def _cell(values: Sequence[float]) -> Cell:
    std = statistics.stdev(values) if len(values) > 1 else None
    return Cell(statistics.fmean(values), std, len(values), list(values))


def _row_labels(
    records: Sequence[dict[str, Any]], rows: str = "backbone"
) -> dict[str, tuple[str, str | None]]:
    """Row key -> (label, sha256 prefix); labels shared by two rows get told apart."""
    first: dict[str, dict[str, Any]] = {}
    for r in records:
        first.setdefault(row_key(r, rows), r)
    out = {}
    for key, r in first.items():
        ev = r.get("evaluated", {})
        label = backbone_label(ev)
        sha = ev.get("sha256")
        if rows == "method" and method_label(r):
            label, sha = method_label(r), None  # several checkpoints: no one hash names the row
        out[key] = (label, sha[:SHA_PREFIX] if sha else None)
    counts: dict[str, int] = {}
    for label, _ in out.values():
        counts[label] = counts.get(label, 0) + 1
    original = dict(out)
    for key, (label, sha) in original.items():
        if counts[label] > 1:
            ident = json.loads(key)
            if "pretraining" in ident:  # tell recipes apart by what differs from the other rows' recipes
                same = [json.loads(k) for k, (other, _) in original.items() if other == label and k != key]
                ident = _recipe_differences(ident, same)
            tell = sha or ", ".join(f"{k} {v}" for k, v in ident.items() if k != "random_init" and v)
            out[key] = (f"{label} [{tell}]", sha)
    return out


def _recipe_differences(ident: dict[str, Any], others: Sequence[dict[str, Any]]) -> dict[str, Any]:
    recipe = ident["pretraining"]
    differ = {
        k: v for k, v in recipe.items()
        if any(isinstance(o.get("pretraining"), dict) and o["pretraining"].get(k) != v for o in others)
    }  # fmt: skip
    return differ or recipe


def build_table(
    records: Iterable[dict[str, Any]],
    *,
    rows: str = "backbone",
    knn: str = "headline",
    metrics: Sequence[str] | None = None,
    reference: str | None = None,
) -> Table:
    """Pivot ``records`` into a :class:`Table`: rows are backbones (in order of first record), columns
    (dataset, task, protocol, kNN setting, hyper-parameter variant, metric).

    ``knn``: ``"headline"`` (each record's headline k and T) or ``"all"``. ``metrics``: record metric
    names to show (default: top1 for classification, every box / mask AP for detection).
    ``reference``: the name of a published table (:func:`reference_names`) whose rows are added.
    ``rows``: ``"backbone"`` or ``"method"`` (pretraining seeds of one recipe averaged in one row).
    """
    if rows not in ROWS:
        raise MochiError(f"unknown rows pivot {rows!r}: use one of {', '.join(ROWS)}")
    if knn not in ("headline", "all"):
        raise MochiError(f"unknown kNN choice {knn!r}: use 'headline' or 'all'")
    records = list(records)
    published = load_reference(reference) if reference else None
    found = _measurements(records, knn, metrics, rows)
    protocols: dict[str, set[str]] = {}
    for m in found:
        if m.family[1] == "detection":
            protocols.setdefault(m.family[0], set()).add(m.family[2])
    settings: dict[tuple, list[str]] = {}
    for m in found:
        settings.setdefault(m.family, [])
        if m.setting not in settings[m.family]:
            settings[m.family].append(m.setting)
    datasets = list(dict.fromkeys(m.family[0] for m in found))
    # (row, family, setting) -> seed -> values; later (newer) records replace a seed's earlier ones.
    cells: dict[tuple, dict[Any, dict[str, list[float]]]] = {}
    shown: dict[tuple, set[str]] = {}  # (family, setting) -> metrics some record has
    for m in found:
        cells.setdefault((m.row, m.family, m.setting), {})[m.seed] = m.values
        shown.setdefault((m.family, m.setting), set()).update(m.values)
    columns: dict[tuple, Column] = {}  # sort key -> column
    column_of: dict[tuple, Column] = {}  # (family, setting, metric) -> column
    for family, family_settings in settings.items():
        ds, task, protocol, setting = family
        variants = _variant_labels(family_settings)
        group = _group(family, len(protocols.get(ds, ())))
        knn_k = (_knn_setting(setting) or (0, 0.0)) if task == "knn" else (0, 0.0)
        sub = "" if task == "knn" else setting  # an analysis record's embedding
        for i, s in enumerate(family_settings):
            for metric in shown[(family, s)]:
                text = (
                    group
                    + (f" [{variants[s]}]" if variants[s] else "")
                    + " "
                    + METRIC_LABELS.get(metric, metric)
                )
                column = Column(ds, task, protocol, metric, group, variants[s], text)
                order = (datasets.index(ds), TASK_ORDER.get(task, 9), protocol, knn_k, sub, i,
                         _metric_order(task, ds, metric))  # fmt: skip
                columns[order] = column_of[(family, s, metric)] = column
    labels = _row_labels(records, rows)
    table_rows: dict[str, Row] = {}
    for (row, family, s), seeds in cells.items():
        table_rows.setdefault(row, Row(labels[row][0], labels[row][1], {}))
        for metric in {k for v in seeds.values() for k in v}:
            values = [x for v in seeds.values() for x in v.get(metric, [])]
            if values:
                table_rows[row].cells[column_of[(family, s, metric)].label] = _cell(values)
    table = Table([columns[k] for k in sorted(columns)], list(table_rows.values()))
    if published is not None:
        _add_published(table, published)
    return table


def reference_names() -> list[str]:
    return sorted(p.stem for p in PUBLISHED.glob("*.json"))


def load_reference(name: str) -> dict[str, Any]:
    """The published table ``name`` (``eval/published/<name>.json``)."""
    path = PUBLISHED / f"{name}.json"
    if not path.is_file():
        raise MochiError(
            f"unknown reference {name!r}: published tables kept are {', '.join(reference_names())}"
        )
    return json.loads(path.read_text())


def _add_published(table: Table, ref: dict[str, Any]) -> None:
    added = 0
    for entry in ref["rows"]:
        row = Row(entry["label"], None, {}, published=True)
        used: list[str] = []
        for c in entry["cells"]:
            for col in table.columns:
                if (col.dataset, col.task, col.protocol, col.metric) == (
                    c["dataset"], c["task"], c["protocol"], c["metric"],
                ):  # fmt: skip
                    row.cells[col.label] = Cell(c["mean"], c.get("std"), c.get("n"))
                    used.append(ref["sources"][c["source"]])
        if row.cells:
            row.source = "; ".join(dict.fromkeys(used))
            table.rows.append(row)
            added += 1
    if not added:
        wanted = sorted({f"{c['dataset']} {c['task']} ({c['protocol']}) {c['metric']}" for e in ref["rows"]
                         for c in e["cells"]})  # fmt: skip
        table.notes.append(
            f"reference {ref['name']!r}: no column of these records matches its entries ({', '.join(wanted)})"
        )
