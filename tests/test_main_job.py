"""The main job's recipe still learns: its MoCo-v2 run against random init, on a fixed seed.

The main job (scripts/main_job.sh, plan 'main' of scripts/reproduce/plans.py) pretrains for 30 epochs of the
study's recipe at 32 px; this test runs its MoCo-v2 run as the plan writes it (pretraining seed 0), then
evaluates the last checkpoint and a random-init ResNet-18 (initialisation seed 0) on the whole embedded split
at the size the main job's suite evaluates at, 64 px (measured: MoCo-v2 84.25 kNN / 86.55 lbfgs, random init
80.65 / 84.3). About ten minutes of one core: marked slow, run in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "reproduce"))

import plans  # noqa: E402

from mochi.eval.suites import get_suite  # noqa: E402

# The main job's suite, as it evaluates: its data at its image size.
SUITE_DATA = get_suite("fashion-mnist").data
EVAL = ["--data", SUITE_DATA["data"], "--image-size", str(SUITE_DATA["image_size"]), "-q", "--no-cache"]


def _mochi(*args: str, **env: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mochi", *args],
        capture_output=True, text=True, check=False, env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _top1(results: Path, task: str, random_init: bool) -> float:
    """The headline top-1 (kNN: k 20, T 0.07) of the one ``task`` record of that backbone in ``results``."""
    found = [
        json.loads(path.read_text())
        for path in sorted(results.glob(f"*-{task}-*.json"))
        if json.loads(path.read_text())["evaluated"].get("random_init", False) is random_init
    ]
    assert len(found) == 1, (task, random_init, len(found))
    return float(found[0]["metrics"]["top1"])


@pytest.mark.slow
def test_the_main_jobs_moco_v2_recipe_beats_random_init_on_a_fixed_seed(tmp_path):
    (suite,) = plans.PLANS["main"].suites
    assert suite.suite == "fashion-mnist" and "--image-size" not in suite.args  # evaluated as EVAL says
    (moco,) = [run for run in plans.MAIN_RUNS if run.name == "moco-v2"]
    assert "--seed" in moco.args and moco.args[moco.args.index("--seed") + 1] == "0"
    run_dir, results = tmp_path / "moco-v2", tmp_path / "results"
    # One intra-op thread, as each of the main job's two side-by-side runs has: the same arithmetic.
    _mochi("pretrain", *moco.args, "-o", str(run_dir), "-q", OMP_NUM_THREADS="1")
    checkpoint = run_dir / f"checkpoint_{moco.epochs - 1:04d}.pth.tar"
    for backbone in ([str(checkpoint)], ["--random-init", "-a", "resnet18", "--init-seed", "0"]):
        _mochi("knn", *backbone, *EVAL, "-o", str(results))
        _mochi("linear", *backbone, *EVAL, "--protocol", "lbfgs", "-o", str(results))
    for task in ("knn", "linear"):
        pretrained, random_init = _top1(results, task, False), _top1(results, task, True)
        assert pretrained > random_init + 1.0, (task, pretrained, random_init)
