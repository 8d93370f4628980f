"""Several evaluations of one backbone started together on a cold, shared feature cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mochi.eval.backbones import BackboneSpec
from mochi.eval.evaluate import EvalData, evaluate_knn, evaluate_linear
from mochi.eval.features import FeatureCache
from mochi.eval.knn import KnnConfig
from mochi.eval.linear import LbfgsConfig

COMMON = ["--random-init", "-a", "resnet18", "--small-stem", "--data", "fashion-mnist-embedded",
          "--image-size", "32", "--limit-train", "300", "--limit-test", "100", "-q"]  # fmt: skip
C_VALUES = "0.01,1"


@pytest.mark.slow
def test_concurrent_runs_on_a_cold_cache_all_write_right_records(tmp_path):
    cache, results = tmp_path / "cache", tmp_path / "results"
    commands = [[sys.executable, "-m", "mochi.cli", "knn", *COMMON, "-k", "10,20"] for _ in range(3)]
    commands.append([sys.executable, "-m", "mochi.cli", "linear", *COMMON, "--protocol", "lbfgs",
                     "--c-values", C_VALUES])  # fmt: skip
    procs = [
        subprocess.Popen([*c, "--cache-dir", str(cache), "-o", str(results)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(outputs)

    # The same evaluations without any cache, in this process: what every record must say.
    data = EvalData(
        data="fashion-mnist-embedded", image_size=32, limit_train=300, limit_test=100, no_cache=True
    )
    spec = BackboneSpec(random_init=True, arch="resnet18", small_stem=True)
    knn = evaluate_knn(spec, data, KnnConfig(ks=(10, 20)))[0]["metrics"]["settings"]
    lbfgs = evaluate_linear(spec, data, LbfgsConfig(c_values=(0.01, 1.0)))[0]["metrics"]

    records = [json.loads(p.read_text()) for p in sorted(Path(results).glob("*.json"))]
    assert sorted(r["task"] for r in records) == ["knn", "knn", "knn", "linear"]
    for r in records:
        if r["task"] == "knn":
            assert r["metrics"]["settings"] == knn
        else:
            assert r["metrics"]["top1"] == lbfgs["top1"]
    # one entry per split, no leftovers of the losing writers
    entries = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert len(entries) == 2 and not any(".partial" in e or ".trash" in e for e in entries), entries
    for e in entries:
        assert (
            FeatureCache(cache, verify=True)._check(
                cache / e, json.loads((cache / e / "meta.json").read_text())["spec"]
            )
            is None
        )
