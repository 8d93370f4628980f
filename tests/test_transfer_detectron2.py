"""torchvision ↔ Detectron2: exact name mapping, the .pkl layout, and loading into Detectron2 models."""

import pickle

import numpy as np
import pytest
import torch

from mochi.safe_pickle import safe_load
from mochi.transfer import (
    build_torchvision_resnet,
    export_backbone,
    from_detectron2,
    load_backbone,
    to_detectron2,
)
from mochi.transfer.detectron2 import d2_to_tv_name, tv_to_d2_name


@pytest.mark.parametrize(
    "tv, d2",
    [
        ("conv1.weight", "stem.conv1.weight"),
        ("bn1.running_var", "stem.conv1.norm.running_var"),
        ("bn1.num_batches_tracked", "stem.conv1.norm.num_batches_tracked"),
        ("layer1.0.conv3.weight", "res2.0.conv3.weight"),
        ("layer1.0.bn3.bias", "res2.0.conv3.norm.bias"),
        ("layer4.2.bn2.weight", "res5.2.conv2.norm.weight"),
        ("layer2.0.downsample.0.weight", "res3.0.shortcut.weight"),
        ("layer2.0.downsample.1.running_mean", "res3.0.shortcut.norm.running_mean"),
        ("fc.0.weight", "stem.fc.0.weight"),
    ],
)
def test_name_mapping_follows_protocol(tv, d2):
    assert tv_to_d2_name(tv) == d2 and d2_to_tv_name(d2) == tv


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext101_32x8d", "wide_resnet50_2"])
def test_reverse_mapping_is_exact_for_every_name(arch):
    with torch.device("meta"):
        names = list(build_torchvision_resnet(arch).state_dict())
    d2 = [tv_to_d2_name(n) for n in names]
    assert len(set(d2)) == len(names)
    assert [d2_to_tv_name(n) for n in d2] == names
    assert all(n.startswith(("stem.", "res2.", "res3.", "res4.", "res5.")) for n in d2)


def test_round_trip_torchvision_detectron2_torchvision(backbone18, tmp_path):
    torch.save(backbone18, tmp_path / "r18.pth")
    export_backbone(tmp_path / "r18.pth", tmp_path / "r18.pkl", to="detectron2")
    back, report = load_backbone(tmp_path / "r18.pkl")
    assert report.format == "detectron2" and report.ok
    assert list(back) == list(backbone18)
    for k, v in backbone18.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert all(torch.equal(from_detectron2(to_detectron2(backbone18))[k], v) for k, v in backbone18.items())


def test_pkl_layout(backbone18, tmp_path):
    mlp = {"fc.0.weight": torch.randn(512, 512), "fc.2.weight": torch.randn(128, 512)}
    torch.save(
        {"state_dict": {f"module.encoder_q.{k}": v for k, v in {**backbone18, **mlp}.items()}},
        tmp_path / "c.pth",
    )
    export_backbone(tmp_path / "c.pth", tmp_path / "c.pkl", to="detectron2")
    d = safe_load(tmp_path / "c.pkl")  # readable without any code execution
    assert set(d) == {"model", "__author__", "matching_heuristics"} and d["matching_heuristics"] is True
    assert "c.pth" in d["__author__"] and "module.encoder_q." in d["__author__"]
    assert all(isinstance(v, np.ndarray) for v in d["model"].values())
    assert "stem.conv1.weight" in d["model"] and "res5.1.conv2.norm.running_var" in d["model"]
    assert d["model"]["res2.0.conv1.norm.num_batches_tracked"].dtype == np.int64
    assert not any("fc" in k for k in d["model"])  # head dropped by default
    export_backbone(tmp_path / "c.pth", tmp_path / "h.pkl", to="detectron2", keep_head=True, author="me")
    d = pickle.loads((tmp_path / "h.pkl").read_bytes())
    assert d["__author__"] == "me" and {"stem.fc.0.weight", "stem.fc.2.weight"} <= set(d["model"])
    _, report = load_backbone(tmp_path / "h.pkl")
    assert report.head_dropped == ["fc.0.weight", "fc.2.weight"]


@pytest.mark.detectron2
@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"]
)
def test_export_loads_into_detectron2_models(config, tmp_path):
    pytest.importorskip(
        "detectron2", reason="Detectron2 not installed; install it with the project's Detectron2 install step"
    )
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    r50 = _r50_backbone()
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in r50.items()}}, tmp_path / "moco.pth")
    export_backbone(tmp_path / "moco.pth", tmp_path / "r50.pkl", to="detectron2")

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(str(tmp_path / "r50.pkl"))
    # The public load() only logs incompatible keys; ask the same code path for them explicitly.
    incompatible = checkpointer._load_model(checkpointer._load_file(str(tmp_path / "r50.pkl")))
    backbone_missing = [k for k in incompatible.missing_keys if _backbone_name(k) is not None]
    assert not backbone_missing, backbone_missing
    assert not getattr(incompatible, "incorrect_shapes", [])
    # Every backbone tensor of the model holds the exported value, not Detectron2's random init.
    checked = 0
    for key, value in model.state_dict().items():
        tv = _backbone_name(key)
        if tv is not None:
            assert torch.equal(value, r50[tv]), key
            checked += 1
    assert checked >= len([k for k in r50 if not k.endswith("num_batches_tracked")])


def _backbone_name(model_key):
    """torchvision name of a Detectron2 R50-C4 / R50-FPN backbone key, or None for other modules."""
    for prefix in ("backbone.bottom_up.", "backbone.", "roi_heads."):
        if model_key.startswith(prefix):
            return d2_to_tv_name(model_key[len(prefix) :])
    return None


def test_resnet50_moco_checkpoint_to_detectron2_and_back(tmp_path):
    r50 = _r50_backbone()
    mlp = {"fc.0.weight": torch.randn(2048, 2048), "fc.2.weight": torch.randn(128, 2048)}
    sd = {f"module.encoder_q.{k}": v for k, v in {**r50, **mlp}.items()}
    meta = {"format_version": 1, "config": {"arch": "resnet50", "small_stem": False}}
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": sd, "mochi": meta}, tmp_path / "c.pth")
    report = export_backbone(tmp_path / "c.pth", tmp_path / "r50.pkl", to="detectron2")
    assert (report.format, report.arch, report.num_loaded) == ("mochi", "resnet50", len(r50))
    d = safe_load(tmp_path / "r50.pkl")["model"]
    assert len(d) == len(r50) and "res5.2.conv3.norm.running_var" in d and "res3.0.shortcut.weight" in d
    back, _ = load_backbone(tmp_path / "r50.pkl")
    assert list(back) == list(r50) and all(torch.equal(back[k], v) for k, v in r50.items())


def _r50_backbone():
    sd = build_torchvision_resnet("resnet50").state_dict()
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}
