"""The runner contract: an evaluation takes config dataclasses, returns records, changes no global state."""

from __future__ import annotations

import logging
import os
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mochi.errors import MochiError
from mochi.eval.backbones import BackboneSpec
from mochi.eval.evaluate import EvalData, evaluate_knn, evaluate_linear
from mochi.eval.knn import KnnConfig
from mochi.eval.linear import LbfgsConfig, MocoLinearConfig, SgdGridConfig
from mochi.eval.records import load_records, write_records


def _global_state() -> dict:
    root = logging.getLogger()
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].copy(),
        "python": random.getstate(),
        "environ": dict(os.environ),
        "handlers": list(root.handlers),
        "level": root.level,
        "warnings": list(warnings.filters),
        "threads": torch.get_num_threads(),
    }


def _same(a: dict, b: dict) -> None:
    assert torch.equal(a["torch"], b["torch"])
    assert np.array_equal(a["numpy"], b["numpy"])
    for key in ("python", "environ", "handlers", "level", "warnings", "threads"):
        assert a[key] == b[key], key


@pytest.fixture()
def data(tmp_path):
    return EvalData(
        data="fashion-mnist-embedded", image_size=32, limit_train=200, limit_test=100, batch_size=100,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip


def _run_all(backbone, data) -> list[dict]:
    records = evaluate_knn(backbone, data, KnnConfig(ks=(5, 10), backend="torch"))
    records += evaluate_linear(backbone, data, LbfgsConfig(c_values=(0.1, 1.0), seed=3))
    sgd = SgdGridConfig(lrs=(0.1,), weight_decays=(0.0,), epochs=2, seed=4)
    records += evaluate_linear(backbone, data, sgd)
    records += evaluate_linear(backbone, data, MocoLinearConfig(epochs=1, batch_size=100, seed=5))
    return records


def test_runners_return_records_and_leave_global_state_alone(data, tmp_path):
    torch.manual_seed(123)
    np.random.seed(7)
    backbone = BackboneSpec(random_init=True, arch="resnet18", small_stem=True).load()
    _run_all(backbone, data)  # first use: third-party libraries load (and may set their own variables)
    before = _global_state()
    records = _run_all(backbone, data)
    _same(before, _global_state())
    assert isinstance(backbone.model.fc, nn.Linear)  # the trunk did not replace the head
    assert [r["task"] for r in records] == ["knn", "linear", "linear", "linear"]
    assert [r["protocol"] for r in records[1:]] == ["lbfgs", "sgd-grid", "moco"]
    assert [r["seed"] for r in records] == [None, 3, 4, 5]
    assert {r["evaluated"]["label"] for r in records} == {"random-init resnet18 (small stem)"}
    assert all("seed" not in r["hyperparameters"] for r in records)
    paths = write_records(tmp_path / "results", records)
    assert len(paths) == 4
    assert [r["id"] for r in load_records(tmp_path / "results")] == [r["id"] for r in records]


def test_a_seeded_protocol_gives_the_same_record_whatever_the_global_state(data):
    spec = BackboneSpec(random_init=True, arch="resnet18", small_stem=True)
    config = MocoLinearConfig(epochs=1, batch_size=100, seed=1)
    torch.manual_seed(0)
    first = evaluate_linear(spec, data, config)[0]["metrics"]
    torch.manual_seed(999)
    second = evaluate_linear(spec, data, config)[0]["metrics"]
    assert first == second


def test_trunk_gives_the_pooled_features_without_touching_the_model():
    backbone = BackboneSpec(random_init=True, arch="resnet18").load()
    model = backbone.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        feats = backbone.trunk().eval()(x)
        assert torch.allclose(model.fc(feats), logits, atol=1e-5)
    assert feats.shape == (2, backbone.feature_dim) and isinstance(model.fc, nn.Linear)


def test_linear_runner_refuses_a_config_that_is_not_a_protocol(data):
    with pytest.raises(MochiError, match="not a linear protocol config: KnnConfig"):
        evaluate_linear(BackboneSpec(random_init=True, arch="resnet18"), data, KnnConfig())


def test_write_records_writes_nothing_when_one_record_is_bad(data, tmp_path):
    good = evaluate_knn(
        BackboneSpec(random_init=True, arch="resnet18", small_stem=True), data, KnnConfig(ks=(5,))
    )
    bad = {k: v for k, v in good[0].items() if k != "metrics"}
    with pytest.raises(MochiError, match="lacks metrics"):
        write_records(tmp_path / "r", [good[0], bad])
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_a_missing_test_split_fails_before_any_feature_is_extracted(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "train" / c / "x.png")
    data = EvalData(
        data=str(tmp_path / "imgs"), test_split="val", image_size=8, cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(MochiError, match="no 'val' split"):
        evaluate_knn(BackboneSpec(random_init=True, arch="resnet18"), data, KnnConfig(ks=(1,)))
    assert not (tmp_path / "c").exists()  # nothing extracted, nothing cached


def test_k_is_checked_against_the_training_set_before_extraction(tmp_path, caplog):
    data = EvalData(
        data="fashion-mnist-embedded",
        image_size=32,
        limit_train=50,
        limit_test=20,
        cache_dir=str(tmp_path / "c"),
    )
    spec = BackboneSpec(random_init=True, arch="resnet18", small_stem=True)
    with pytest.raises(MochiError, match="100 exceeds the 50 training images"):
        evaluate_knn(spec, data, KnnConfig(ks=(10, 100)))
    assert not (tmp_path / "c").exists()
    with caplog.at_level("WARNING"):
        (record,) = evaluate_knn(spec, data, KnnConfig())  # the default list, trimmed with a notice
    assert record["hyperparameters"]["k"] == [10, 20]
    assert "using k = 10,20 of the default 10,20,100,200" in caplog.text


def test_a_pretraining_checkpoint_record_carries_its_config(tmp_path):
    # What `mochi table --rows method` groups by: the recipe the checkpoint was trained with.
    import torchvision

    from mochi.eval.backbones import load_eval_backbone

    sd = {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    config = {"arch": "resnet18", "epochs": 2, "n_hard": 8, "seed": 3, "output": "runs/x"}
    ckpt = {"epoch": 2, "arch": "resnet18", "state_dict": sd, "mochi": {"config": config}}
    torch.save(ckpt, tmp_path / "a.pth")
    torch.save({"epoch": 2, "arch": "resnet18", "state_dict": sd}, tmp_path / "b.pth")
    assert load_eval_backbone(tmp_path / "a.pth").evaluated["pretraining"] == config
    assert "pretraining" not in load_eval_backbone(tmp_path / "b.pth").evaluated
