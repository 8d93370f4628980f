"""The raw-pixel baseline: ``--pixels`` evaluates the evaluation transform's output itself, through the same
record, table and suite path as any backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mochi.cli import main
from mochi.errors import MochiError
from mochi.eval.backbones import load_eval_backbone
from mochi.eval.evaluate import EvalData, evaluate_knn, evaluate_linear
from mochi.eval.knn import KnnConfig
from mochi.eval.linear import MocoLinearConfig
from mochi.eval.records import load_records
from mochi.eval.suite import SuiteConfig, run_suite


@pytest.fixture()
def data(tmp_path) -> EvalData:
    return EvalData(
        data="fashion-mnist-embedded", image_size=16, limit_train=200, limit_test=100, batch_size=100,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip


def _knn_by_hand(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, k: int, t: float) -> np.ndarray:
    """InstDisc weighted vote on unit rows: class score = sum over the k nearest of exp(cos / T)."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = test @ train.T
    idx = np.argsort(-sims, axis=1)[:, :k]
    scores = np.zeros((len(test), train_y.max() + 1))
    for i, row in enumerate(idx):
        np.add.at(scores[i], train_y[row], np.exp(sims[i, row] / t))
    return scores.argmax(1)


def test_pixel_knn_is_knn_on_the_transformed_images(data):
    from mochi.eval.evaluate import _open_splits
    from mochi.transforms import eval_transform

    (record,) = evaluate_knn(load_eval_backbone(pixels=True), data, KnnConfig(ks=(5,), backend="torch"))
    assert record["evaluated"]["label"] == "raw pixels" and record["evaluated"]["pixels"] is True
    assert record["data"]["features"]["dim"] == 3 * 16 * 16  # every channel of every pixel

    train, test = _open_splits(data, eval_transform(16)[0])
    x_train = torch.stack([train[i][0] for i in range(len(train))]).flatten(1).numpy()
    y_train = np.array([train[i][1] for i in range(len(train))])
    x_test = torch.stack([test[i][0] for i in range(len(test))]).flatten(1).numpy()
    y_test = np.array([test[i][1] for i in range(len(test))])
    want = 100 * float(np.mean(_knn_by_hand(x_train, y_train, x_test, 5, 0.07) == y_test))
    assert record["metrics"]["settings"]["k5_T0.07"]["top1"] == pytest.approx(want, abs=1e-6)


def test_moco_protocol_refuses_pixels(data):
    with pytest.raises(MochiError, match="use --protocol lbfgs or sgd-grid with --pixels"):
        evaluate_linear(load_eval_backbone(pixels=True), data, MocoLinearConfig(epochs=1))


def test_cli_pixels_writes_a_record_and_rejects_a_second_backbone(tmp_path):
    runner = CliRunner()
    common = ["--data", "fashion-mnist-embedded", "--image-size", "16", "--limit-train", "200",
              "--limit-test", "60", "-q", "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    res = str(tmp_path / "results")
    out = runner.invoke(main, ["knn", "--pixels", *common, "-o", res, "-k", "5"])
    assert out.exit_code == 0, out.output
    assert load_records(res)[0]["evaluated"]["label"] == "raw pixels"
    out = runner.invoke(main, ["knn", "--pixels", "--random-init", "-a", "resnet18", *common, "-o", res])
    assert out.exit_code != 0 and "exactly one of them" in out.output
    out = runner.invoke(main, ["linear", "--pixels", "--protocol", "moco", *common, "-o", res])
    assert out.exit_code != 0 and "--pixels" in out.output
    assert len(load_records(res)) == 1  # the failed runs wrote nothing


def test_suite_baseline_pixels_is_a_table_row(tmp_path):
    cfg = SuiteConfig(
        checkpoints=[], suite="fashion-mnist", output=tmp_path / "suite", baselines=["pixels"], seeds=[0],
        limit_train=200, limit_test=100, image_size=16, cache_dir=str(tmp_path / "c"), progress=False,
        options=["linear-lbfgs.c_values=[0.01,0.1]", "linear-sgd-grid.epochs=2", "linear-sgd-grid.lrs=[0.1]",
                 "linear-sgd-grid.weight_decays=[0]"],
    )  # fmt: skip
    result = run_suite(cfg)
    assert len(result["ran"]) == 3
    assert "| raw pixels" in result["table"]
    table = json.loads((tmp_path / "suite" / "table.json").read_text())
    assert "raw pixels" in json.dumps(table)
    assert run_suite(cfg)["ran"] == []  # resumable like any backbone
