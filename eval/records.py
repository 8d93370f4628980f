"""One result-record format for every evaluation (kNN, linear, detection, ...).

A record is a JSON object saying what was evaluated, on what data, by which protocol with which
hyper-parameters and seed, with which library versions, and what came out::

    {
      "schema": "mochi.record/1",
      "id": "20261122T210405Z-knn-3f2a9c1b",        # unique; also the file name
      "created": "2026-11-22T21:04:05.123456Z",     # microseconds: orders records made in one second
      "task": "knn",                                 # knn | linear | detection | detection-aggregate | ...
      "protocol": "knn-weighted-vote",               # the named protocol that produced the numbers
      "evaluated": {"checkpoint": "...", "sha256": "...", "arch": "resnet50", "encoder": "query", ...},
      "data": {"dataset": "fashion-mnist", "train": {...}, "test": {...}},
      "hyperparameters": {...},
      "seed": 0,
      "metrics": {"top1": 81.3, ...},
      "versions": {"mochi": "...", "torch": "...", ...},
      "wall_time_s": 12.3
    }

Records are written one file each (``<results_dir>/<id>.json``), atomically, only once an evaluation
has finished: a failed run writes nothing and never touches existing records. Tables are rendered
from records, never typed.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mochi.constants import PRETRAIN_ADDED_FIELDS
from mochi.errors import MochiError
from mochi.io import atomic_open
from mochi.versions import library_versions

SCHEMA = "mochi.record/1"
REQUIRED = ("schema", "id", "created", "task", "protocol", "evaluated", "data", "hyperparameters", "metrics")


def make_record(
    *,
    task: str,
    protocol: str,
    evaluated: dict[str, Any],
    data: dict[str, Any],
    hyperparameters: dict[str, Any],
    metrics: dict[str, Any],
    seed: int | None = None,
    wall_time_s: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a record (not yet written). ``extra`` holds task-specific fields (e.g. per-seed ids)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    rid = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{task}-{uuid.uuid4().hex[:8]}"
    record = {
        "schema": SCHEMA,
        "id": rid,
        "created": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "task": task,
        "protocol": protocol,
        "evaluated": evaluated,
        "data": data,
        "hyperparameters": hyperparameters,
        "seed": seed,
        "metrics": metrics,
        "versions": library_versions(),
        "wall_time_s": wall_time_s,
    }
    if extra:
        record.update(extra)
    validate_record(record)
    return record


def validate_record(record: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise MochiError(f"result record lacks {', '.join(missing)}; it is not a {SCHEMA} record")
    if record["schema"] != SCHEMA:
        raise MochiError(f"unsupported record schema {record['schema']!r}; this mochi reads {SCHEMA}")
    json.dumps(record)  # must be plain JSON


def write_record(results_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``<results_dir>/<id>.json`` atomically; never overwrites an existing record."""
    validate_record(record)
    path = Path(results_dir) / f"{record['id']}.json"
    if path.exists():
        raise MochiError(
            f"a record named {path.name} already exists in {results_dir}; refusing to overwrite it"
        )
    with atomic_open(path, "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return path


def write_records(results_dir: str | Path, records: Sequence[dict[str, Any]]) -> list[Path]:
    """The one writer of evaluation results: every record of ``records`` as ``<results_dir>/<id>.json``.

    All records are validated before the first is written, so a bad record writes nothing.
    """
    for record in records:
        validate_record(record)
    return [write_record(results_dir, record) for record in records]


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """All records in ``results_dir`` (recursively), oldest first. A damaged file is a clear error."""
    root = Path(results_dir)
    if not root.is_dir():
        raise MochiError(f"results directory not found: {root}")
    records = []
    for path in sorted(root.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MochiError(f"cannot read result record {path}: {err}; remove or repair the file") from None
        if isinstance(record, dict) and record.get("schema") == SCHEMA:
            records.append(record)
    return sorted(records, key=lambda r: (r["created"], r["id"]))


# Keys that say how a number was computed, not which number it is: two records differing only here are
# the same measurement (FAISS and torch search give the same neighbours; BLAS threads change speed only).
EXECUTION_KEYS = frozenset({"backend", "search_device", "blas_threads"})


def backbone_identity(record: dict[str, Any]) -> dict[str, Any]:
    """What was evaluated, independent of where the file lies: the checkpoint's sha256 with the encoder and
    prefix read from it, or for a random-init baseline its architecture and stem (the init seed is a seed
    of the cell, see :func:`seed_of`)."""
    ev = record.get("evaluated", {})
    if ev.get("random_init"):
        return {"random_init": True, "arch": ev.get("arch"), "stem": ev.get("stem")}
    if ev.get("pixels"):
        return {"pixels": True}
    return {k: ev.get(k) for k in ("sha256", "encoder", "prefix", "arch", "stem")}


# Pretraining config fields that say where or how a run was executed, not what it learned with: two runs
# differing only here (and in ``seed``) are seeds of one method.
RUN_ONLY_KEYS = frozenset({
    "seed", "output", "resume", "stop_after", "workers", "device", "amp", "channels_last", "log_every",
    "save_every", "save_every_steps", "keep_last", "data_root", "skip_corrupt", "config", "quiet",
    "analysis", "analysis_n",  # what was logged, not what was learned
})  # fmt: skip


def _partial_progress(ev: dict[str, Any]) -> dict[str, int] | None:
    """A checkpoint's progress when it stopped short of its config's epochs (an earlier epoch of a run, or a
    mid-epoch checkpoint); None for a finished run's last checkpoint and for records without progress."""
    progress, config = ev.get("pretraining_progress"), ev.get("pretraining")
    if not isinstance(progress, dict) or not isinstance(config, dict):
        return None
    if progress.get("step") or progress.get("epoch") != config.get("epochs"):
        return {"epoch": progress.get("epoch"), "step": progress.get("step", 0)}
    return None


def method_identity(record: dict[str, Any]) -> dict[str, Any]:
    """The pretraining recipe behind a record's backbone: its checkpoint's pretraining config without
    :data:`RUN_ONLY_KEYS` (so without the seed), with the encoder, and how far the checkpoint got when it
    stopped short of the config's epochs (epoch 10 of a 40-epoch run is not a seed of epoch 40). Backbones
    without a pretraining config (baselines, foreign checkpoints) are their own method:
    :func:`backbone_identity`."""
    ev = record.get("evaluated", {})
    config = ev.get("pretraining")
    if not isinstance(config, dict):
        return backbone_identity(record)
    # Options added later are filled in, so that a run saved before them pools with one that left them off.
    recipe = {k: v for k, v in {**PRETRAIN_ADDED_FIELDS, **config}.items() if k not in RUN_ONLY_KEYS}
    ident = {"pretraining": recipe, "encoder": ev.get("encoder"), "arch": ev.get("arch")}
    partial = _partial_progress(ev)
    if partial is not None:
        ident["progress"] = partial
    return ident


def backbone_label(evaluated: dict[str, Any]) -> str:
    """The name tables, listings and plots give an evaluated backbone: a random-init one by its architecture
    and, unless torchvision's own, its stem (``random-init resnet18 (small stem)``; records written before
    the stem was named read the same), any other by its record's label or its checkpoint's file name."""
    if evaluated.get("random_init"):
        stem = evaluated.get("stem")
        named = f" ({stem} stem)" if stem not in (None, "standard") else ""
        return f"random-init {evaluated.get('arch')}{named}"
    checkpoint = evaluated.get("checkpoint")
    return evaluated.get("label") or (Path(str(checkpoint)).name if checkpoint else "random-init")


def method_label(record: dict[str, Any]) -> str | None:
    """``MoCo-v2 resnet18, 20 ep`` or ``MoCHi (N, s, s') = (512, 512, 128) resnet18, 20 ep`` for a record
    whose checkpoint carries its pretraining config (``10 of 20 ep`` for an earlier checkpoint of a 20-epoch
    run, ``10 of 20 ep + 5 steps`` mid-epoch; ``20 ep of 4,000 images`` for a run on a ``--limit`` subset,
    whose epochs are not those of a run on all images); None otherwise."""
    ev = record.get("evaluated", {})
    c = ev.get("pretraining")
    if not isinstance(c, dict):
        return None
    n, s, s_prime = (c.get(k, c.get(old, 0)) for k, old in (("n_hard", "mochi_n"), ("s", "mochi_s"),
                                                             ("s_prime", "mochi_s_prime")))  # fmt: skip
    name = f"MoCHi (N, s, s') = ({n}, {s}, {s_prime})" if n else "MoCo-v2"
    if c.get("oracle"):  # the upper-bound experiment: same-class negatives removed
        name += " + class oracle"
    if c.get("symmetric"):
        name += ", symmetric loss"
    epochs = f"{c.get('epochs')} ep"
    partial = _partial_progress(ev)
    if partial is not None:
        epochs = f"{partial['epoch']} of {epochs}" + (
            f" + {partial['step']} steps" if partial["step"] else ""
        )
    if isinstance(c.get("limit"), int):
        epochs += f" of {c['limit']:,} images"
    return f"{name} {ev.get('arch')}, {epochs}"


def data_identity(record: dict[str, Any]) -> dict[str, Any]:
    """The data a record measured, without its folder (``root``) or whether features came from the cache."""
    data = json.loads(json.dumps(record.get("data", {})))
    for split in ("train", "test"):
        if isinstance(data.get(split), dict):
            data[split].pop("root", None)
    if isinstance(data.get("features"), dict):
        data["features"].pop("cached", None)
    return data


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to 12 significant digits: hyper-parameters computed by a library
    (``lbfgs``'s C grid, ``np.logspace``) differ in the last bit between its versions, not as settings."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def setting_key(record: dict[str, Any]) -> str:
    """One string per measurement setting: task, protocol, backbone, data and hyper-parameters (without
    :data:`EXECUTION_KEYS`; floats to 12 significant digits). Records with equal keys differ only by seed:
    they are seeds of one table cell."""
    hyper = {k: _rounded(v) for k, v in record.get("hyperparameters", {}).items() if k not in EXECUTION_KEYS}
    key = {
        "task": record.get("task"),
        "protocol": record.get("protocol"),
        "backbone": backbone_identity(record),
        "data": data_identity(record),
        "hyperparameters": hyper,
    }
    return json.dumps(key, sort_keys=True)


def seed_of(record: dict[str, Any], method: bool = False) -> tuple[Any, ...]:
    """A record's seed within its setting: the evaluation seed, and a random-init backbone's init seed;
    with ``method``, also the pretraining seed (the seeds of a :func:`method_identity` row)."""
    ev = record.get("evaluated", {})
    seed = (record.get("seed"), ev.get("seed") if ev.get("random_init") else None)
    if method:
        config = ev.get("pretraining")
        return (*seed, config.get("seed") if isinstance(config, dict) else None)
    return seed


# The columns ``mochi results`` shows by default, by task: what a reader of that task looks at first.
DEFAULT_METRICS = {
    "knn": ("top1", "top5"),
    "linear": ("top1", "top5"),
    "detection": ("AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75"),
    "detection-aggregate": ("AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75"),
    "analysis": ("align", "uniform"),
}


def _fmt(value: Any) -> str:
    if isinstance(value, dict) and "mean" in value:  # a detection aggregate: mean ± sample std over seeds
        if value["mean"] is None:
            return f"n/a (n={value.get('n', 0)})"
        std = "" if value.get("std") is None else f" ± {value['std']:.2f}"
        return f"{value['mean']:.2f}{std} (n={value.get('n')})"
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


def default_metrics(records: Iterable[dict[str, Any]]) -> list[str]:
    """The metric columns for ``records``: each task's :data:`DEFAULT_METRICS` that some record has
    (an unknown task: its numeric metrics), in order of first appearance."""
    seen: dict[str, None] = {}
    for r in records:
        names = DEFAULT_METRICS.get(r["task"])
        if names is None:
            names = [k for k, v in r["metrics"].items() if isinstance(v, (int, float))]
        seen.update((k, None) for k in names if k in r["metrics"])
    return list(seen)


def all_metrics(records: Iterable[dict[str, Any]]) -> list[str]:
    """Every metric some record has that fits a cell: numbers and detection aggregates."""
    seen: dict[str, None] = {}
    for r in records:
        for k, v in r["metrics"].items():
            if isinstance(v, (int, float)) or (isinstance(v, dict) and "mean" in v):
                seen.setdefault(k, None)
    return list(seen)


def format_table(records: Iterable[dict[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """A plain-text table, one row per record: id, task, protocol, checkpoint, dataset, seed, metrics
    (default: :func:`default_metrics`). A detection aggregate's cells read ``mean ± std (n=k)``."""
    records = list(records)
    if metrics is None:
        metrics = default_metrics(records)
    header = ["id", "task", "protocol", "checkpoint", "encoder", "dataset", "seed", *metrics]
    rows = []
    for r in records:
        ev = r.get("evaluated", {})
        name = backbone_label(ev)
        rows.append(
            [r["id"], r["task"], r["protocol"], name, _fmt(ev.get("encoder")), _fmt(r["data"].get("dataset")),
             _fmt(r.get("seed")), *(_fmt(r["metrics"].get(m)) for m in metrics)]
        )  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
