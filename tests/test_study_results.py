"""The committed Fashion-MNIST study (docs/results/fashion_mnist/study_long/): its table is what its records
give, and what the README and the study doc say of it holds on those records (read here without the table
code: raw JSON, mean and sample standard deviation)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LONG = ROOT / "docs" / "results" / "fashion_mnist" / "study_long"
STEPS = ("knn", "linear-lbfgs", "linear-sgd-grid")
MOCO = "MoCo-v2"
MOCHI = ("MoCHi (512, 512, 128)", "MoCHi (256, 512, 0)")
RANDOM = "random-init ResNet-18 (3 initialisation seeds)"


def _method(evaluated: dict) -> tuple[str, int]:
    if evaluated.get("random_init"):
        return RANDOM, evaluated["seed"]
    if evaluated.get("checkpoint") is None:
        return "raw pixels", 0
    p = evaluated["pretraining"]
    name = f"MoCHi ({p['n_hard']}, {p['s']}, {p['s_prime']})" if p["n_hard"] else MOCO
    return name, p["seed"]


@pytest.fixture(scope="module")
def top1() -> dict[str, dict[str, dict[int, float]]]:
    """method -> suite step -> seed -> top-1 (the kNN record's headline setting, k=20)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted((LONG / "records").glob("*.json")):
        record = json.loads(path.read_text())
        metrics = record["metrics"]
        value = metrics["settings"][metrics["headline"]]["top1"] if "headline" in metrics else metrics["top1"]
        method, seed = _method(record["evaluated"])
        out[method][record["suite"]["step"]][seed] = value
    return out


def _stats(top1, method: str, step: str) -> tuple[float, float]:
    values = list(top1[method][step].values())
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def test_every_method_has_three_seeds_on_every_probe(top1):
    for method in (MOCO, *MOCHI, RANDOM):
        assert all(sorted(top1[method][step]) == [0, 1, 2] for step in STEPS), method
    assert all(len(top1["raw pixels"][step]) == 1 for step in STEPS)


def test_the_committed_table_is_rebuilt_from_the_records(tmp_path):
    out = tmp_path / "table.md"
    cmd = [sys.executable, "-m", "mochi", "table", str(LONG / "records"), "--rows", "method", "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert out.read_text() == (LONG / "table.md").read_text()


def test_moco_v2_beats_both_baselines_by_three_seed_std_on_every_probe(top1):
    for step in STEPS:
        mean, std = _stats(top1, MOCO, step)
        r_mean, r_std = _stats(top1, RANDOM, step)
        pixels, _ = _stats(top1, "raw pixels", step)
        assert mean - r_mean > 3 * max(std, r_std), step
        assert mean - pixels > 3 * std, step


def test_mochi_clears_the_pixels_on_the_linear_probes_not_on_knn_and_does_not_beat_moco(top1):
    for method in MOCHI:
        for step in STEPS:
            mean, std = _stats(top1, method, step)
            pixels, _ = _stats(top1, "raw pixels", step)
            assert (mean - pixels > 3 * std) == (step != "knn"), (method, step)
            moco, moco_std = _stats(top1, MOCO, step)
            assert abs(mean - moco) < 2 * max(std, moco_std), (method, step)  # within the seed spread
        assert _stats(top1, method, "knn")[0] < _stats(top1, MOCO, "knn")[0]


def test_the_readme_quotes_the_records(top1):
    readme = (ROOT / "README.md").read_text()
    for method in (MOCO, *MOCHI, RANDOM):
        cells = " | ".join("{:.1f} ± {:.1f}".format(*_stats(top1, method, step)) for step in STEPS)
        assert f"| {method} | {cells} |" in readme, method
    pixels = " | ".join(f"{round(_stats(top1, 'raw pixels', step)[0], 2):g}" for step in STEPS)
    assert f"| raw pixels | {pixels} |" in readme
