"""Each recognised layout, built from its naming conventions, converts to the same torchvision tensors."""

import argparse
import pickle
import re

import numpy as np
import pytest
import torch

from mochi import layout as mochi_layout
from mochi.errors import MochiError
from mochi.transfer import from_detectron2, inspect_checkpoint, load_backbone, to_detectron2
from mochi.transfer.detectron2 import tv_to_d2_name


def _prefixed(sd, prefix, shift=0.0):
    return {prefix + k: (v + shift if v.is_floating_point() else v.clone()) for k, v in sd.items()}


def _mlp(prefix, dim=512):
    return {
        prefix + "0.weight": torch.randn(dim, dim),
        prefix + "0.bias": torch.randn(dim),
        prefix + "2.weight": torch.randn(16, dim),
        prefix + "2.bias": torch.randn(16),
    }


def _lightly_names(sd):
    index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    return {index[k.split(".")[0]] + k[len(k.split(".")[0]) :]: v for k, v in sd.items()}


# Each builder: backbone (torchvision names, no fc) → (object, how to save, format, prefix, encoder)
def mochi_own(b):
    sd = {**_prefixed(b, "module.encoder_q."), **_mlp("module.encoder_q.fc.")}
    sd |= {**_prefixed(b, "module.encoder_k.", 1.0), **_mlp("module.encoder_k.fc.")}
    sd |= {"module.queue": torch.randn(16, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    sd["module.queue_labels"] = torch.full((64,), -1, dtype=torch.long)  # the label queue (newer runs)
    meta = {"format_version": 1, "config": {"arch": "resnet18", "small_stem": False}, "version": "0.1.0"}
    obj = {"epoch": 2, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}}, "mochi": meta}
    return obj, "torch", "mochi", "module.encoder_q.", "query"


def moco_reference(b):
    sd = {**_prefixed(b, "module.encoder_q."), "module.encoder_q.fc.weight": torch.randn(128, 512)}
    sd |= {**_prefixed(b, "module.encoder_k.", 1.0), "module.encoder_k.fc.weight": torch.randn(128, 512)}
    sd |= {"module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return (
        {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {}},
        "torch",
        "moco",
        "module.encoder_q.",
        "query",
    )


def solo_learn(b):
    sd = {**_prefixed(b, "backbone."), **_prefixed(b, "momentum_backbone.", 1.0), **_mlp("projector.")}
    sd |= {
        **_mlp("momentum_projector."),
        "classifier.weight": torch.randn(10, 512),
        "classifier.bias": torch.zeros(10),
    }
    return {"epoch": 1, "global_step": 5, "state_dict": sd}, "torch", "solo-learn", "backbone.", "query"


def mmselfsup(b):
    sd = {**_prefixed(b, "backbone."), **_mlp("neck.mlp."), "head.loss.weight": torch.zeros(1)}
    sd |= _prefixed(b, "momentum_encoder.module.0.", 1.0)
    meta = {"mmengine_version": "0.10", "epoch": 200}
    return {"meta": meta, "state_dict": sd}, "torch", "mmselfsup", "backbone.", "query"


def vissl(b):
    trunk = _prefixed(b, "_feature_blocks.")
    heads = {"0.clf.0.weight": torch.randn(128, 512)}
    obj = {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}}}, "phase_idx": 3}
    return obj, "torch", "vissl", "_feature_blocks.", None


def lightly_sequential(b):
    sd = {**_prefixed(_lightly_names(b), "backbone."), **_mlp("projection_head.layers.")}
    sd |= {
        **_prefixed(_lightly_names(b), "backbone_momentum.", 1.0),
        **_mlp("projection_head_momentum.layers."),
    }
    return {"state_dict": sd}, "torch", "lightly", "backbone.", "query"


def lightly_plain(b):
    return (
        {**_prefixed(b, "backbone."), **_mlp("projection_head.layers.")},
        "torch",
        "lightly",
        "backbone.",
        None,
    )


def dino(b):
    teacher = {**_prefixed(b, "backbone."), **_mlp("head.mlp.")}
    student = {**_prefixed(b, "module.backbone.", 1.0), **_mlp("module.head.mlp.")}
    obj = {"teacher": teacher, "student": student, "epoch": 100, "optimizer": {}}
    return obj, "torch", "dino", "backbone.", "teacher"


def timm_train(b):
    sd = {**b, "fc.weight": torch.randn(10, 512), "fc.bias": torch.randn(10)}
    ema = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in sd.items()}
    return (
        {"epoch": 3, "arch": "resnet18", "state_dict": sd, "state_dict_ema": ema},
        "torch",
        "timm",
        "",
        "query",
    )


def timm_model(b):
    return {"model": dict(b)}, "torch", "timm", "", None


def torchvision_plain(b):
    return (
        {**b, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)},
        "torch",
        "torchvision",
        "",
        None,
    )


def torchvision_legacy(b):
    return (
        {**b, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)},
        "legacy",
        "torchvision",
        "",
        None,
    )


def detectron2_pkl(b):
    model = to_detectron2({**b, **{k[len("x.") :]: v for k, v in _mlp("x.fc.").items()}})
    obj = {"model": model, "__author__": "someone", "matching_heuristics": True}
    return obj, "pickle", "detectron2", "", None


def detectron2_fpn_pth(b):
    model = {"backbone.bottom_up." + tv_to_d2_name(k): v for k, v in b.items()}
    model |= {
        "backbone.fpn_lateral2.weight": torch.randn(8, 64, 1, 1),
        "proposal_generator.x": torch.zeros(1),
    }
    return {"model": model, "iteration": 90000}, "torch", "detectron2-checkpoint", "backbone.bottom_up.", None


def detectron2_c4_pth(b):
    model = {}
    for k, v in b.items():
        name = tv_to_d2_name(k)
        model[("roi_heads." if name.startswith("res5.") else "backbone.") + name] = v
    model["roi_heads.box_predictor.cls_score.weight"] = torch.randn(21, 512)
    return {"model": model}, "torch", "detectron2-checkpoint", "backbone.", None


LAYOUTS = [
    mochi_own,
    moco_reference,
    solo_learn,
    mmselfsup,
    vissl,
    lightly_sequential,
    lightly_plain,
    dino,
    timm_train,
    timm_model,
    torchvision_plain,
    torchvision_legacy,
    detectron2_pkl,
    detectron2_fpn_pth,
    detectron2_c4_pth,
]


def save(obj, how, path):
    if how == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=4))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=how != "legacy")
    return path


def assert_same(got, want):
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
def test_layout_converts_bit_for_bit(layout, backbone18, tmp_path):
    obj, how, fmt, prefix, encoder = layout(backbone18)
    path = save(obj, how, tmp_path / ("ckpt.pkl" if how == "pickle" else "ckpt.pth"))
    got, report = load_backbone(path)
    assert_same(got, backbone18)
    assert (report.format, report.prefix, report.encoder) == (fmt, prefix, encoder)
    assert report.arch == "resnet18" and report.stem == "standard" and report.ok
    assert report.num_loaded == len(backbone18) and not report.missing and not report.unexpected
    assert not any(k.startswith(("layer", "conv1", "bn1")) for k in report.head_dropped)


def test_report_lists_head_and_ignored(backbone18, tmp_path):
    obj, *_ = mochi_own(backbone18)
    _, report = load_backbone(save(obj, "torch", tmp_path / "c.pth"))
    assert report.head_dropped == ["fc.0.bias", "fc.0.weight", "fc.2.bias", "fc.2.weight"]
    assert report.ignored["state_dict.module.encoder_k"] == len(backbone18) + 4
    assert report.ignored["state_dict.module.queue"] == 1
    assert report.ignored["state_dict.module.queue_labels"] == 1  # a queue buffer, not a backbone tensor
    d = report.to_dict()
    assert d["format"] == "mochi" and d["ok"] and d["sha256"] and d["source"].endswith("c.pth")


@pytest.mark.parametrize(
    "layout, encoder", [(mochi_own, "key"), (solo_learn, "key"), (dino, "student"), (timm_train, "key")]
)
def test_other_encoder(layout, encoder, backbone18, tmp_path):
    obj, how, *_ = layout(backbone18)
    got, report = load_backbone(save(obj, how, tmp_path / "c.pth"), encoder=encoder)
    want = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in backbone18.items()}
    assert_same(got, want)
    assert report.encoder == encoder


def test_wrong_encoder_is_a_clear_error(backbone18, tmp_path):
    obj, how, *_ = mochi_own(backbone18)
    with pytest.raises(MochiError, match="no teacher encoder.*--encoder query"):
        load_backbone(save(obj, how, tmp_path / "c.pth"), encoder="teacher")


def test_prefix_overrides_detection(backbone18, tmp_path):
    obj, how, *_ = mochi_own(backbone18)
    path = save(obj, how, tmp_path / "c.pth")
    got, report = load_backbone(path, prefix="module.encoder_k.")
    assert report.prefix == "module.encoder_k." and report.encoder == "key"
    assert torch.equal(got["conv1.weight"], backbone18["conv1.weight"] + 1)
    with pytest.raises(MochiError, match="--prefix 'encoder_q.': no tensor"):
        load_backbone(path, prefix="encoder_q.")


def test_ambiguous_backbones_need_prefix(backbone18, tmp_path):
    obj = {**_prefixed(backbone18, "net_a.", 1.0), **_prefixed(backbone18, "net_b.")}
    path = save(obj, "torch", tmp_path / "c.pth")
    with pytest.raises(MochiError, match="several ResNet backbones.*--prefix"):
        load_backbone(path)
    got, _ = load_backbone(path, prefix="net_b.")
    assert_same(got, backbone18)


def test_no_recognisable_prefix(tmp_path):
    path = save({"state_dict": {"encoder.blockA.weight": torch.zeros(3)}}, "torch", tmp_path / "c.pth")
    with pytest.raises(MochiError, match="no recognisable ResNet prefix.*--prefix"):
        load_backbone(path)
    path = save({"epoch": 3}, "torch", tmp_path / "d.pth")
    with pytest.raises(MochiError, match="holds no tensors"):
        load_backbone(path)
    vit = {"patch_embed.proj.weight": torch.zeros(2), "blocks.0.attn.qkv.weight": torch.zeros(2)}
    with pytest.raises(MochiError, match="Vision Transformer"):
        load_backbone(save(vit, "torch", tmp_path / "v.pth"))


def test_caffe2_pkl_is_out_of_scope(tmp_path):
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res2_0_branch2a_w": np.zeros(2, np.float32)}
    path = save({"blobs": blobs}, "pickle", tmp_path / "R-50.pkl")
    with pytest.raises(MochiError, match="Caffe2"):
        load_backbone(path)


def test_missing_and_unexpected_tensors_are_errors(backbone18, tmp_path):
    sd = dict(backbone18)
    del sd["layer2.1.conv2.weight"]
    with pytest.raises(MochiError, match=r"1 missing backbone tensors \(layer2.1.conv2.weight\)"):
        load_backbone(save(sd, "torch", tmp_path / "m.pth"))
    sd = {**backbone18, "layer1.0.se.fc1.weight": torch.zeros(4, 64)}
    with pytest.raises(MochiError, match=r"unexpected backbone tensors \(layer1.0.se.fc1.weight\)"):
        load_backbone(save(sd, "torch", tmp_path / "u.pth"))


def test_missing_num_batches_tracked_is_filled(backbone18, tmp_path):
    # Old torchvision files (before PyTorch 0.4.1) have no num_batches_tracked; torchvision fills 0 too.
    sd = {k: v for k, v in backbone18.items() if not k.endswith("num_batches_tracked")}
    got, report = load_backbone(save(sd, "torch", tmp_path / "old.pth"))
    assert report.ok and len(report.filled) == 20 and report.num_loaded == len(sd)
    assert got["bn1.num_batches_tracked"].item() == 0 and list(got) == list(backbone18)


def test_from_detectron2_accepts_file_content_or_model(backbone18):
    d = to_detectron2(backbone18)
    assert_same(from_detectron2(d), backbone18)
    assert_same(from_detectron2({"model": d, "__author__": "x"}), backbone18)
    with pytest.raises(MochiError, match="not a Detectron2 ResNet name"):
        from_detectron2({"fpn_lateral2.weight": np.zeros(1)})


def test_own_checkpoints_are_recognised_by_layout_version(backbone18, tmp_path):
    # The format label comes from the mochi block's format_version, not from a "mochi" key alone.
    obj, *_ = mochi_own(backbone18)
    torch.save(obj, tmp_path / "ours.pth")
    assert load_backbone(tmp_path / "ours.pth")[1].format == "mochi"
    no_version = {**obj, "mochi": {k: v for k, v in obj["mochi"].items() if k != "format_version"}}
    torch.save(no_version, tmp_path / "other.pth")
    assert load_backbone(tmp_path / "other.pth")[1].format == "moco"
    newer = {**obj, "mochi": {**obj["mochi"], "format_version": mochi_layout.FORMAT_VERSION + 1}}
    torch.save(newer, tmp_path / "newer.pth")
    with pytest.raises(MochiError, match="newer mochi.*layout version 2.*upgrade"):
        load_backbone(tmp_path / "newer.pth")


def test_top_level_tensor_beside_state_dict(backbone18, tmp_path):
    # MoCo's main_lincls.py / the PyTorch ImageNet example save best_acc1 as a tensor next to state_dict.
    sd = {**_prefixed(backbone18, "module."), "module.fc.weight": torch.randn(10, 512)}
    obj = {"epoch": 90, "arch": "resnet18", "state_dict": sd, "best_acc1": torch.tensor(70.1)}
    got, report = load_backbone(save(obj, "torch", tmp_path / "lincls.pth.tar"))
    assert_same(got, backbone18)
    assert report.prefix == "module." and report.ignored == {"best_acc1": 1}
    assert report.head_dropped == ["fc.weight"]


def lightly_benchmark_moco(b):
    """Lightly's benchmarks (benchmarks/imagenet/resnet50/mocov2.py): backbone, projection_head, key_backbone,
    key_projection_head in a Lightning checkpoint; built from that documented layout."""
    sd = {**_prefixed(b, "backbone."), **_mlp("projection_head.layers.")}
    sd |= {**_prefixed(b, "key_backbone.", 1.0), **_mlp("key_projection_head.layers.")}
    return {"epoch": 100, "state_dict": sd}, "torch", "lightly", "backbone.", "query"


def lightly_benchmark_dino(b):
    sd = {**_prefixed(b, "teacher_backbone."), **_mlp("teacher_head.layers.")}
    sd |= {**_prefixed(b, "student_backbone.", 1.0), **_mlp("student_head.layers.")}
    return {"epoch": 100, "state_dict": sd}, "torch", "lightly", "teacher_backbone.", "teacher"


def vissl_moco(b):
    """VISSL MoCo: the query trunk in base_model, the momentum encoder in the loss state as moco_encoder."""
    trunk = {**_prefixed(b, "_feature_blocks."), "heads.0.clf.0.weight": torch.randn(128, 512)}
    key = {**_prefixed(b, "trunk._feature_blocks.", 1.0), **_mlp("heads.0.clf.")}
    loss = {"queue": torch.randn(128, 64), "moco_encoder": key}
    obj = {"classy_state_dict": {"base_model": {"model": {"trunk": trunk}}, "loss": loss}}
    return obj, "torch", "vissl", "_feature_blocks.", "query"


@pytest.mark.parametrize(
    "layout, encoder, prefix",
    [
        (lightly_benchmark_moco, "key", "key_backbone."),
        (lightly_benchmark_dino, "student", "student_backbone."),
        (vissl_moco, "key", "trunk._feature_blocks."),
    ],
)
def test_two_encoder_layouts(layout, encoder, prefix, backbone18, tmp_path):
    obj, how, fmt, default_prefix, default_encoder = layout(backbone18)
    path = save(obj, how, tmp_path / "c.pth")
    got, report = load_backbone(path)
    assert_same(got, backbone18)
    assert (report.format, report.prefix, report.encoder) == (fmt, default_prefix, default_encoder)
    want = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in backbone18.items()}
    for kw in ({"encoder": encoder}, {"prefix": prefix}):
        got, report = load_backbone(path, **kw)
        assert_same(got, want)
        assert (report.format, report.prefix, report.encoder) == (fmt, prefix, encoder)


def test_keep_head_packs_the_chosen_encoders_own_head(backbone18, tmp_path):
    obj, how, *_ = lightly_benchmark_moco(backbone18)
    sd = obj["state_dict"]
    for kw in ({"encoder": "key"}, {"prefix": "key_backbone."}):
        _, head, report = inspect_checkpoint(save(obj, how, tmp_path / "c.pth"), **kw)
        assert sorted(head) == sorted(k for k in sd if k.startswith("key_projection_head."))
        assert all(torch.equal(head[k], sd[k]) for k in head)
        assert report.head_dropped == sorted(head)
    _, _, report = inspect_checkpoint(tmp_path / "c.pth", encoder="query")
    assert all(k.startswith("projection_head.") for k in report.head_dropped)


def test_momentum_heads_are_listed_as_dropped(backbone18, tmp_path):
    obj, how, *_ = lightly_sequential(backbone18)
    _, report = load_backbone(save(obj, how, tmp_path / "c.pth"), encoder="key")
    assert report.head_dropped == sorted(
        k for k in obj["state_dict"] if k.startswith("projection_head_momentum.")
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"args": argparse.Namespace(arch="resnet50")},  # DINO / MoCo args
        {"hyper_parameters": {"backbone": {"name": "resnet50"}}},  # Lightning hyper-parameters
        {"arch": "resnet50.a1_in1k"},  # timm, with a pretrained tag
    ],
)
def test_declared_arch_must_match_the_tensors(settings, backbone18, tmp_path):
    path = save({"state_dict": backbone18, **settings}, "torch", tmp_path / "c.pth")
    with pytest.raises(
        MochiError, match=r"declares arch resnet50(\.a1_in1k)? but mochi builds a torchvision resnet18"
    ):
        load_backbone(path)


def mmselfsup_moco(b):
    """MMSelfSup 0.x MoCo: encoder_q = Sequential(backbone, neck) shares its modules with backbone / neck, so
    the query backbone is saved twice; encoder_k is the momentum copy. Built from that saving layout."""
    sd = {**_prefixed(b, "backbone."), **_prefixed(b, "encoder_q.0."), **_mlp("encoder_q.1.mlp.")}
    sd |= {**_mlp("neck.mlp."), **_prefixed(b, "encoder_k.0.", 1.0), **_mlp("encoder_k.1.mlp.")}
    sd |= {"queue": torch.randn(128, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"meta": {"epoch": 200, "mmcv_version": "1.4"}, "state_dict": sd}


def test_mmselfsup_moco_labels(backbone18, tmp_path):
    path = save(mmselfsup_moco(backbone18), "torch", tmp_path / "c.pth")
    got, report = load_backbone(path)
    assert_same(got, backbone18)
    assert (report.format, report.encoder) == ("mmselfsup", "query")
    got, report = load_backbone(path, encoder="key")
    assert (report.format, report.prefix, report.encoder) == ("mmselfsup", "encoder_k.0.", "key")


def test_torchvision_references_layout(backbone18, tmp_path):
    """references/classification/train.py: model, optimizer, lr_scheduler, epoch, args (+ model_ema)."""
    obj = {"model": backbone18, "optimizer": {}, "lr_scheduler": {"last_epoch": 3}, "epoch": 3}
    obj |= {"args": argparse.Namespace(model="resnet18", lr=0.5)}
    _, report = load_backbone(save(obj, "torch", tmp_path / "c.pth"))
    assert (report.format, report.container, report.declared_arch) == (
        "torchvision-references",
        "model",
        "resnet18",
    )


def test_ambiguity_hint_names_what_to_type(backbone18, tmp_path):
    obj = {"a": _prefixed(backbone18, "net."), "b": _prefixed(backbone18, "net.", 1.0)}
    path = save(obj, "torch", tmp_path / "c.pth")
    with pytest.raises(MochiError, match=r"pick one with --prefix \('a/net\.' or 'b/net\.'\)"):
        load_backbone(path)
    got, _ = load_backbone(path, prefix="a/net.")
    assert_same(got, backbone18)


def test_width_multiplied_resnet_is_named(tmp_path):
    # VISSL RN50-w2: every width doubled, the 64-channel stem included (128 here).
    sd = {"conv1.weight": torch.zeros(128, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(128, 128, 1, 1)}
    sd |= {"layer1.0.conv3.weight": torch.zeros(512, 128, 1, 1)}
    with pytest.raises(
        MochiError, match=r"conv1 has 128 output channels.*RN50-w2.*not torchvision's wide_resnet"
    ):
        load_backbone(save(sd, "torch", tmp_path / "w2.pth"))


_MM_CFG = """model = dict(
    type='MoCo',
    backbone=dict(
        type='ResNet',
        depth=18,
        norm_cfg=dict(type='BN'),
        zero_init_residual=False),
    neck=dict(type='MoCoV2Neck', in_channels=512, hid_channels=512, out_channels=128))"""


@pytest.mark.parametrize(
    "cfg, declared",
    [
        (_MM_CFG, None),
        (_MM_CFG.replace("depth=18", "depth=50"), "resnet50"),
        (_MM_CFG.replace("zero_init_residual=False", "style='caffe'"), "resnet18 (style='caffe')"),
    ],
)
def test_mmengine_meta_cfg_names_the_backbone(cfg, declared, backbone18, tmp_path):
    """mmengine saves the config text as meta.cfg (its documented checkpoint layout, built here)."""
    obj = {
        "meta": {"mmengine_version": "0.10.4", "cfg": cfg},
        "state_dict": _prefixed(backbone18, "backbone."),
    }
    path = save(obj, "torch", tmp_path / "epoch_200.pth")
    if declared is None:
        got, report = load_backbone(path)
        assert_same(got, backbone18)
        assert report.declared_arch == "resnet18"
    else:
        with pytest.raises(MochiError, match=rf"declares arch {re.escape(declared)} but mochi builds"):
            load_backbone(path)
