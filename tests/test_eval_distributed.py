"""Feature extraction sharded over two torchrun processes equals the single-process pass."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ARGS = ["knn", "--random-init", "-a", "resnet18", "--data", "fashion-mnist-embedded", "--image-size", "32",
        "--limit-train", "120", "--limit-test", "40", "-k", "5,10", "-q"]  # fmt: skip


def run(cmd, tmp, name):
    out = tmp / name
    args = [*cmd, *ARGS, "--cache-dir", str(out / "cache"), "-o", str(out / "results")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    (record,) = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    features = {p.parent.name: np.load(p) for p in (out / "cache").glob("*/features.npy")}
    return record, features


@pytest.mark.slow
def test_torchrun_sharded_features_and_knn_match_single_process(tmp_path):
    single = [sys.executable, "-m", "mochi.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "mochi.cli"]  # fmt: skip
    rec1, feats1 = run(single, tmp_path, "single")
    rec2, feats2 = run(torchrun, tmp_path, "ddp")
    assert feats1.keys() == feats2.keys() and len(feats1) == 2  # same cache keys: train and test
    for key in feats1:
        np.testing.assert_allclose(feats1[key], feats2[key], rtol=0, atol=1e-5)
    assert rec1["metrics"]["settings"] == rec2["metrics"]["settings"]
