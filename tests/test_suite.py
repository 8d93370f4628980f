"""``mochi suite``: the plan, its checks before any work, and resuming a suite stopped part way."""

from __future__ import annotations

import csv
import io
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mochi.cli import main
from mochi.eval.records import load_records
from mochi.eval.suite import SuiteConfig, plan_suite, run_suite

# Small and fast: 200 / 100 images, two C values, two sgd epochs.
FAST = [
    "--limit-train", "200", "--limit-test", "100", "--option", "linear-lbfgs.c_values=[0.01,0.1]",
    "--option", "linear-sgd-grid.epochs=2", "--option", "linear-sgd-grid.lrs=[0.1]",
    "--option", "linear-sgd-grid.weight_decays=[0]",
]  # fmt: skip


def _fast_config(tmp_path: Path, checkpoints, **kw) -> SuiteConfig:
    return SuiteConfig(
        checkpoints=[str(c) for c in checkpoints], suite="fashion-mnist", output=tmp_path / "suite",
        limit_train=200, limit_test=100, cache_dir=str(tmp_path / "c"), progress=False,
        options=["linear-lbfgs.c_values=[0.01,0.1]", "linear-sgd-grid.epochs=2", "linear-sgd-grid.lrs=[0.1]",
                 "linear-sgd-grid.weight_decays=[0]"], **kw,
    )  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(1)
    sd = {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    path = tmp_path / "moco" / "checkpoint_0001.pth.tar"
    path.parent.mkdir()
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": sd}, path)
    return path


def test_plan_lists_every_backbone_step_and_seed(tmp_path, checkpoint):
    plan = plan_suite(_fast_config(tmp_path, [checkpoint], baselines=["resnet18"], seeds=[0, 1]))
    got = [(plan.labels[p.backbone], p.step.name, p.seed) for p in plan.evaluations]
    want = []
    for label in (str(checkpoint), "random-init resnet18"):
        want += [(label, "knn", None)]
        want += [(label, step, seed) for step in ("linear-lbfgs", "linear-sgd-grid") for seed in (0, 1)]
    assert got == want
    assert len({p.key for p in plan.evaluations}) == len(want)  # one request each
    assert not (tmp_path / "suite").exists()  # planning writes nothing
    # The request names the checkpoint by content: a copy elsewhere is the same evaluation.
    copy = tmp_path / "copy.pth.tar"
    copy.write_bytes(checkpoint.read_bytes())
    again = plan_suite(_fast_config(tmp_path, [copy], seeds=[0, 1]))
    assert [p.key for p in again.evaluations] == [p.key for p in plan.evaluations[:5]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suite", "nope"], "--suite 'nope' is not a suite; choose one of fashion-mnist"),
        (["--suite", "in100"], "--data-root is required by suite in100"),
        (["--suite", "voc", "--data-root", "x"], "--data-root does not apply to suite voc"),
        (["--suite", "fashion-mnist", "--option", "knn.k=5"], "knn has no field 'k'; fields: backend, ks"),
        (["--suite", "fashion-mnist", "--option", "oops"], "--option 'oops': write STEP.FIELD=VALUE"),
        (["--suite", "fashion-mnist", "--option", "linear-lbfgs.max_iter=0"], "linear-lbfgs.max_iter must"),
        (["--suite", "fashion-mnist", "--seeds", "1,1"], "--seeds [1, 1]: give distinct seeds"),
        (["--suite", "fashion-mnist", "--seeds", "a,b"], "'a,b': comma-separated integers, e.g. 0,1,2"),
        (["--suite", "coco", "--variant", "3x"], "--variant '3x' is not a variant of suite coco; choose"),
        (["--suite", "fashion-mnist", "missing.pth"], "checkpoint not found: missing.pth"),
        (["--suite", "fashion-mnist"], "give at least one checkpoint, or --baseline ARCH"),
        (
            ["--suite", "fashion-mnist", "--baseline", "resnet18", "--init-seeds", "1,1"],
            "--init-seeds 1,1: give distinct seeds >= 0, e.g. 0,1,2",
        ),
        (
            ["--suite", "fashion-mnist", "--baseline", "pixels", "--init-seeds", "0,1"],
            "--init-seeds applies to random-init baselines: add --baseline ARCH, or drop it",
        ),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, args, message):
    out = CliRunner().invoke(main, ["suite", *args, "-o", str(tmp_path / "suite")])
    assert out.exit_code != 0 and message in out.output, out.output
    assert "Traceback" not in out.output
    assert not (tmp_path / "suite").exists()


def test_dry_run_lists_todo_then_done(tmp_path):
    args = ["suite", "--suite", "fashion-mnist", "--baseline", "resnet18", "--seeds", "0", "-o",
            str(tmp_path / "suite"), "--cache-dir", str(tmp_path / "cache"), *FAST]  # fmt: skip
    out = CliRunner().invoke(main, [*args, "--dry-run"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines == [
        "todo  random-init resnet18: knn",
        "todo  random-init resnet18: linear-lbfgs seed 0",
        "todo  random-init resnet18: linear-sgd-grid seed 0",
    ]
    assert not (tmp_path / "suite").exists()


def test_random_init_init_seeds_are_backbones_of_one_row(tmp_path):
    """``--init-seeds 0,1``: one random-init backbone per seed; init seed 0 is the same request as the
    default (a suite run before the option existed resumes), and the table pools the seeds into mean ± std."""
    default = plan_suite(_fast_config(tmp_path, [], baselines=["resnet18"], seeds=[0]))
    cfg = _fast_config(tmp_path, [], baselines=["resnet18"], seeds=[0], init_seeds=[0, 1])
    plan = plan_suite(cfg)
    assert plan.labels == ["random-init resnet18 (init seed 0)", "random-init resnet18 (init seed 1)"]
    assert [p.key for p in plan.evaluations[:3]] == [p.key for p in default.evaluations]
    assert len({p.key for p in plan.evaluations}) == 6
    result = run_suite(cfg)
    knn = sorted((r for r in result["records"] if r["task"] == "knn"), key=lambda r: r["evaluated"]["seed"])
    assert [r["evaluated"]["seed"] for r in knn] == [0, 1]
    top1 = [r["metrics"]["top1"] for r in knn]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "suite" / "table.csv").read_text())))
    assert [r["backbone"] for r in rows] == ["random-init resnet18"]
    column = next(c for c in rows[0] if "kNN" in c and c.endswith(" mean"))
    assert float(rows[0][column]) == pytest.approx(statistics.mean(top1), abs=0.01)
    assert int(rows[0][column.replace(" mean", " n")]) == 2
    assert float(rows[0][column.replace(" mean", " std")]) == pytest.approx(statistics.stdev(top1), abs=0.01)


@pytest.mark.slow
def test_a_killed_suite_resumes_with_only_the_missing_evaluations(tmp_path, checkpoint):
    """Kill ``mochi suite`` once its first record exists; the same command then runs only the rest."""
    out = tmp_path / "suite"
    cmd = [
        sys.executable,
        "-m",
        "mochi",
        "suite",
        str(checkpoint),
        "--suite",
        "fashion-mnist",
        "--baseline",
        "resnet18",
        "--seeds",
        "0,1",
        "-o",
        str(out),
        "--cache-dir",
        str(tmp_path / "c"),
        *FAST,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "results").glob("*.json")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no record within 300 s"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = load_records(out / "results")
    assert 1 <= len(first) < 10, "the suite should have been stopped part way"
    cfg = _fast_config(tmp_path, [checkpoint], baselines=["resnet18"], seeds=[0, 1])
    result = run_suite(cfg)
    assert len(result["skipped"]) == len(first)
    assert len(result["ran"]) == 10 - len(first)
    records = load_records(out / "results")
    assert len(records) == 10 and len({r["suite"]["request"] for r in records}) == 10
    assert {r["id"] for r in first} <= {r["id"] for r in records}  # finished records were kept, not redone
    # Each checkpoint's features were extracted once: every later protocol read them from the cache.
    cached = [r["data"]["features"]["cached"] for r in records if r["suite"]["step"] != "knn"]
    assert all(c == [True, True] for c in cached)
    again = run_suite(cfg)
    assert again["ran"] == [] and len(again["skipped"]) == 10
    dry = CliRunner().invoke(main, [*cmd[3:], "--dry-run"])
    lines = dry.output.strip().splitlines()
    assert dry.exit_code == 0 and len(lines) == 10 and all(line.startswith("done  ") for line in lines), (
        dry.output
    )
    # ... and ends with the table and its pictures
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert [r["backbone"] for r in rows] == ["moco/checkpoint_0001.pth.tar", "random-init resnet18"]
    lbfgs = [r for r in records if r["suite"]["step"] == "linear-lbfgs" and r["evaluated"].get("random_init")]
    column = next(c for c in rows[1] if "lbfgs" in c and c.endswith(" mean"))
    assert float(rows[1][column]) == pytest.approx(statistics.mean(r["metrics"]["top1"] for r in lbfgs))
    for picture in ("table.png", "knn.png"):
        assert (out / "plots" / picture).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.detectron2
@pytest.mark.slow
def test_a_detection_suite_fine_tunes_each_seed_once(tmp_path, monkeypatch):
    """A detection step runs through the detection driver: one record per seed, skipped when run again."""
    from test_detection import TESTDATA, _needs_detectron2, _needs_testdata

    _needs_detectron2()
    _needs_testdata()
    import torch

    import mochi.eval.suite as suite_module
    from mochi import layout
    from mochi.eval.suites import Step, Suite
    from mochi.resnet import build_torchvision_resnet

    torch.manual_seed(0)
    r50 = {f"module.encoder_q.{k}": v for k, v in build_torchvision_resnet("resnet50").state_dict().items()}
    meta = {"format_version": layout.FORMAT_VERSION, "config": {"arch": "resnet50", "small_stem": False}}
    checkpoint = tmp_path / "r50.pth"
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": r50, "mochi": meta}, checkpoint)
    voc = str(TESTDATA / "voc")
    step = Step("smoke", "detection", "smoke_R50_C4",
                {"config": "smoke_R50_C4", "train": [voc], "test": [voc]})  # fmt: skip
    smoke = Suite("smoke", "VOC-layout photos", "docs/protocols.md#pascal-voc", {}, (step,), (0,))
    monkeypatch.setattr(suite_module, "get_suite", lambda name: smoke)
    cfg = SuiteConfig(checkpoints=[str(checkpoint)], suite="smoke", output=tmp_path / "s", num_gpus=0)
    result = run_suite(cfg)
    (record,) = result["records"]
    assert record["task"] == "detection" and record["seed"] == 0 and "AP50" in record["metrics"]
    assert record["suite"]["step"] == "smoke"
    assert run_suite(cfg)["ran"] == []
    assert "AP50" in (tmp_path / "s" / "table.md").read_text()
