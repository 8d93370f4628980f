"""A checkpoint zoo written by the peers' own code, where it installs from PyPI (timm, Lightly), and from the
framework's documented saving layout where it does not (solo-learn: its pinned dependencies do not resolve
with this torch). For each entry: the report (format, prefix, encoder, arch, stem) is right, the exported
tensors equal the peer's backbone bit for bit, and our model's features equal the peer model's own forward
pass — features, not only names, because a stem with other padding has the same tensor shapes."""

import argparse
import copy
import json

import pytest
import torch
import torchvision
from torch import nn

from mochi.errors import MochiError
from mochi.transfer import build_backbone, export_backbone, load_backbone


def _features(report, state, x):
    model = build_backbone(report, state).eval()
    model.fc = nn.Identity()
    with torch.no_grad():
        return model(x)


def _check(path, want_state, peer_forward, x, tmp_path, **kw):
    """Exported tensors equal ``want_state``; our features equal ``peer_forward(x)``. Returns the report."""
    out = tmp_path / "export.pth"
    report = export_backbone(path, out, to="torchvision", **kw)
    got = torch.load(out, weights_only=True)
    assert set(got) == {k for k in want_state if not k.startswith("fc.")}
    for k, v in got.items():
        assert v.dtype == want_state[k].dtype and torch.equal(v, want_state[k]), k
    with torch.no_grad():
        want = peer_forward(x)
    assert torch.equal(_features(report, got, x), want)
    return report


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 64)


def _timm_model():
    timm = pytest.importorskip("timm", reason="timm writes the timm checkpoints of the zoo")
    torch.manual_seed(1)
    return timm.create_model("resnet18").eval()


def test_timm_hub_safetensors(images, tmp_path):
    pytest.importorskip("safetensors", reason="the hub weights are .safetensors files")
    from safetensors.torch import save_file

    model = _timm_model()
    save_file(model.state_dict(), tmp_path / "model.safetensors")  # the hub's file: a flat state dict
    report = _check(
        tmp_path / "model.safetensors",
        model.state_dict(),
        lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
        images,
        tmp_path,
    )
    assert (report.format, report.prefix, report.encoder) == ("safetensors", "", None)
    assert (report.arch, report.stem, report.head_dropped) == (
        "resnet18",
        "standard",
        ["fc.bias", "fc.weight"],
    )


def test_timm_train_checkpoint_saver(images, tmp_path):
    """timm train.py's CheckpointSaver: arch, args (an argparse.Namespace), state_dict, optimizer, metric."""
    from timm.utils import CheckpointSaver

    model = _timm_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=3)
    saver = CheckpointSaver(
        model, opt, args=args, checkpoint_dir=tmp_path, recovery_dir=tmp_path, max_history=1
    )
    saver.save_checkpoint(0, metric=1.0)
    report = _check(
        tmp_path / "last.pth.tar",
        model.state_dict(),
        lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
        images,
        tmp_path,
    )
    assert (report.format, report.container, report.prefix, report.arch) == (
        "timm",
        "state_dict",
        "",
        "resnet18",
    )
    assert report.declared_arch == "resnet18"


def test_lightly_moco(images, tmp_path):
    """Lightly's MoCo model as its examples build it: backbone = the ResNet's children but fc, its heads."""
    pytest.importorskip("lightly", reason="Lightly writes the Lightly checkpoint of the zoo")
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad

    class MoCo(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone
            self.projection_head = MoCoProjectionHead(512, 512, 128)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

    torch.manual_seed(2)
    resnet = torchvision.models.resnet18()
    model = MoCo(nn.Sequential(*list(resnet.children())[:-1])).eval()
    torch.save(model.state_dict(), tmp_path / "moco.pth")
    want = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    report = _check(tmp_path / "moco.pth", want, lambda x: model.backbone(x).flatten(1), images, tmp_path)
    assert (report.format, report.prefix, report.encoder, report.arch) == (
        "lightly",
        "backbone.",
        "query",
        "resnet18",
    )


def _solo_learn_cifar_resnet18():
    # solo-learn's methods/base.py for cifar10/cifar100: 3×3 conv1, stride 1, padding 2, no max-pool.
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model.eval()


def _save_solo_learn(tmp_path, dataset):
    """solo-learn's saving layout (Lightning checkpoint of the method; args.json beside it), built from its
    documented layout: solo-learn's pinned dependencies do not install with this torch."""
    torch.manual_seed(3)
    backbone = _solo_learn_cifar_resnet18()
    sd = {"backbone." + k: v for k, v in backbone.state_dict().items()}
    sd |= {
        "momentum_backbone." + k: v + 1 if v.is_floating_point() else v
        for k, v in backbone.state_dict().items()
    }
    sd |= {"projector.0.weight": torch.randn(2048, 512), "classifier.weight": torch.randn(10, 512)}
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "mocov2plus-cifar10-ep=999.ckpt"
    torch.save({"epoch": 999, "global_step": 1, "pytorch-lightning_version": "2.0.0", "state_dict": sd}, ckpt)
    if dataset is not None:
        settings = {"method": "mocov2plus", "backbone": {"name": "resnet18"}, "data": {"dataset": dataset}}
        (run / "args.json").write_text(json.dumps(settings))
    return ckpt, backbone


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_solo_learn_cifar_stem_from_args_json(dataset, images, tmp_path):
    ckpt, backbone = _save_solo_learn(tmp_path, dataset)
    x = images[:, :, :32, :32]
    report = _check(ckpt, backbone.state_dict(), backbone, x, tmp_path)
    assert (report.format, report.prefix, report.encoder) == ("solo-learn", "backbone.", "query")
    assert (report.arch, report.stem, report.stem_padding) == ("resnet18", "small-pad2", 2)
    assert report.stem_source == f"args.json: solo-learn data.dataset {dataset}"
    assert "stem: small-pad2 (from args.json" in report.to_text()


def test_small_stem_without_settings_is_reported_as_assumed(images, tmp_path):
    ckpt, backbone = _save_solo_learn(tmp_path, None)
    x = images[:, :, :32, :32]
    state, report = load_backbone(ckpt)
    assert (report.stem, report.stem_source) == ("small", "assumed")
    assert (
        "assumed: a 3×3 conv1 with no settings" in report.to_text()
        and "--stem small-pad2" in report.to_text()
    )
    with torch.no_grad():
        # Same shapes, different network: the assumption matters, which is why the report says it.
        assert not torch.allclose(_features(report, state, x), backbone(x))
    report = _check(ckpt, backbone.state_dict(), backbone, x, tmp_path, stem="small-pad2")
    assert (report.stem, report.stem_source) == ("small-pad2", "--stem")


def test_stem_option_refusals(backbone18, tmp_path):
    torch.save(backbone18, tmp_path / "r18.pth")
    out = tmp_path / "out.pth"
    with pytest.raises(MochiError, match=r"--stem small: the checkpoint's conv1 is 7×7.*leave --stem out"):
        export_backbone(tmp_path / "r18.pth", out, to="torchvision", stem="small")
    with pytest.raises(MochiError, match=r"--stem 'tiny': choose one of standard, small, small-pad2"):
        export_backbone(tmp_path / "r18.pth", out, to="torchvision", stem="tiny")
    assert not out.exists()


def test_timm_blur_pool_resnet_is_refused_by_its_declared_arch(tmp_path):
    """timm's resnetblur18 has resnet18's tensors: only the checkpoint's arch name tells them apart."""
    pytest.importorskip("timm", reason="timm writes the timm checkpoints of the zoo")
    import timm
    from timm.utils import CheckpointSaver

    model = timm.create_model("resnetblur18")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = CheckpointSaver(
        model, opt, args=argparse.Namespace(model="resnetblur18"), checkpoint_dir=tmp_path
    )
    saver.save_checkpoint(0, metric=1.0)
    out = tmp_path / "out.pth"
    with pytest.raises(
        MochiError, match=r"declares arch resnetblur18 but mochi builds a torchvision resnet18"
    ):
        export_backbone(tmp_path / "last.pth.tar", out, to="torchvision")
    assert not out.exists()


def test_timm_hub_config_names_the_arch(tmp_path):
    pytest.importorskip("safetensors", reason="the hub weights are .safetensors files")
    from safetensors.torch import save_file

    model = _timm_model()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000}))
    assert load_backbone(tmp_path / "model.safetensors")[1].declared_arch == "resnet18"
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnetblur18"}))
    with pytest.raises(
        MochiError, match=r"declares arch resnetblur18 but mochi builds a torchvision resnet18"
    ):
        load_backbone(tmp_path / "model.safetensors")
