"""Architecture inference from tensors, the small stem, strict building, wrong-architecture errors."""

import pytest
import torch
import torchvision

from mochi.errors import MochiError
from mochi.transfer import ARCHS, build_backbone, build_torchvision_resnet, infer_arch, load_backbone


def _meta_backbone(arch, small_stem=False):
    with torch.device("meta"):
        sd = build_torchvision_resnet(arch, small_stem).state_dict()
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_infers_every_supported_arch(arch):
    info = infer_arch(_meta_backbone(arch))
    assert (info.arch, info.stem) == (arch, "standard")
    assert infer_arch(_meta_backbone(arch, small_stem=True)).stem == "small"


def test_unknown_block_counts_are_a_clear_error():
    sd = {k: v for k, v in _meta_backbone("resnet50").items() if not k.startswith("layer3.5.")}
    with pytest.raises(MochiError, match=r"wrong architecture: blocks per stage \[3, 4, 5, 3\].*--arch"):
        infer_arch(sd)


def test_arch_assertion(backbone18, tmp_path):
    torch.save(backbone18, tmp_path / "r18.pth")
    with pytest.raises(MochiError, match="holds a resnet18 backbone but --arch resnet34 was requested"):
        load_backbone(tmp_path / "r18.pth", arch="resnet34")
    # A damaged file whose block counts match nothing: --arch names it and the report lists what is missing.
    sd = {k: v for k, v in backbone18.items() if not k.startswith("layer4.1.")}
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(MochiError, match="blocks per stage"):
        load_backbone(tmp_path / "cut.pth")
    with pytest.raises(MochiError, match=r"missing backbone tensors \(layer4.1.conv1.weight"):
        load_backbone(tmp_path / "cut.pth", arch="resnet18")


def test_declared_arch_must_match_tensors(backbone18, tmp_path):
    torch.save(
        {"arch": "resnet50", "state_dict": _prefix(backbone18, "module.encoder_q.")}, tmp_path / "c.pth"
    )
    with pytest.raises(MochiError, match="declares arch resnet50 but mochi builds a torchvision resnet18"):
        load_backbone(tmp_path / "c.pth")


def _prefix(sd, p):
    return {p + k: v for k, v in sd.items()}


def test_deep_stem_is_unsupported(backbone18, tmp_path):
    sd = {k: v for k, v in backbone18.items() if not k.startswith(("conv1.", "bn1."))}
    sd |= {"stem.0.conv.weight": torch.zeros(32, 3, 3, 3), "stem.0.bn.weight": torch.zeros(32)}
    torch.save({"meta": {}, "state_dict": _prefix(sd, "backbone.")}, tmp_path / "v1d.pth")
    with pytest.raises(MochiError, match="deep stem.*not supported"):
        load_backbone(tmp_path / "v1d.pth")


def test_build_backbone_loads_strictly_except_fc(backbone18, tmp_path):
    torch.save(_prefix(backbone18, "module.encoder_q."), tmp_path / "c.pth")
    sd, report = load_backbone(tmp_path / "c.pth")
    model = build_backbone(report, sd)
    assert isinstance(model, torchvision.models.ResNet)
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, backbone18[k]), k
    assert torch.equal(build_backbone("resnet18", sd).conv1.weight, sd["conv1.weight"])
    with pytest.raises(MochiError, match="do not fit the model.*missing"):
        build_backbone("resnet34", sd)


def test_small_stem_round_trip_and_clear_mismatch(tmp_path):
    model = build_torchvision_resnet("resnet18", small_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save(
        {
            "state_dict": _prefix(sd, "module.encoder_q."),
            "mochi": {"format_version": 1, "config": {"small_stem": True}},
        },
        tmp_path / "s.pth",
    )
    got, report = load_backbone(tmp_path / "s.pth")
    assert report.stem == "small" and report.ok
    built = build_backbone(report, got)
    assert isinstance(built.maxpool, torch.nn.Identity)
    assert built(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)
    with pytest.raises(MochiError, match=r"stem mismatch.*small_stem=True"):
        build_backbone("resnet18", got)
    with pytest.raises(MochiError, match=r"stem mismatch.*small_stem=False"):
        build_backbone("resnet18", _meta_free(torchvision.models.resnet18()), small_stem=True)


def _meta_free(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
