"""Detection metrics: Detectron2 evaluator output → record metrics, and their aggregation over seeds.

Pure functions of plain dicts: no Detectron2, no I/O.

Aggregation: mean and **sample** standard deviation (``n - 1`` in the denominator, as the MoCo papers'
"mean of 5 runs ± std"); ``std`` is ``None`` for a single seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Record metric name → (Detectron2 evaluator task, metric). Box AP keeps the plain names, so VOC and COCO
#: box numbers read alike; mask AP is prefixed.
METRICS = {
    "AP": ("bbox", "AP"),
    "AP50": ("bbox", "AP50"),
    "AP75": ("bbox", "AP75"),
    "mask_AP": ("segm", "AP"),
    "mask_AP50": ("segm", "AP50"),
    "mask_AP75": ("segm", "AP75"),
}


def metrics_from_results(results: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """Detectron2 evaluator output (``{"bbox": {"AP": ..}, "segm": {..}}``) → record metrics (percent).

    Only the metrics the results hold appear (VOC: AP, AP50, AP75; COCO with masks: also mask_*);
    a NaN (COCO's "no predictions") becomes ``None``.
    """
    out: dict[str, float | None] = {}
    for name, (task, key) in METRICS.items():
        value = results.get(task, {}).get(key)
        if value is not None:
            value = float(value)
            out[name] = value if math.isfinite(value) else None
    return out


def aggregate(per_seed: Sequence[Mapping[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per-seed metric dicts → ``{metric: {"mean", "std", "n", "values"}}``.

    ``std`` is the sample standard deviation (denominator ``n - 1``), ``None`` when ``n < 2``; seeds
    where a metric is ``None`` (no predictions) are left out of that metric's mean and counted in ``n``
    only if present.
    """
    names: dict[str, None] = {}
    for m in per_seed:
        names.update(dict.fromkeys(m))
    out = {}
    for name in names:
        values = [float(m[name]) for m in per_seed if m.get(name) is not None]
        n = len(values)
        mean = sum(values) / n if n else None
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else None
        out[name] = {"mean": mean, "std": std, "n": n, "values": values}
    return out


def format_aggregate(agg: Mapping[str, Mapping[str, Any]]) -> str:
    """``AP50 82.40 ± 0.20 (n=5)`` lines."""
    lines = []
    for name, a in agg.items():
        mean = "n/a" if a["mean"] is None else f"{a['mean']:.2f}"
        std = "" if a["std"] is None else f" ± {a['std']:.2f}"
        lines.append(f"{name:10s} {mean}{std} (n={a['n']})")
    return "\n".join(lines)
