"""mochi export / mochi inspect: exit codes, messages, --force, outputs that load where promised."""

import json
import pickle

import pytest
import torch
import torchvision
from click.testing import CliRunner

from mochi.cli import main


@pytest.fixture
def moco_ckpt(backbone18, tmp_path):
    sd = {f"module.encoder_q.{k}": v for k, v in backbone18.items()}
    sd |= {"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.queue": torch.randn(16, 32)}
    path = tmp_path / "checkpoint_0200.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd}, path)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_export_torchvision_loads_with_only_fc_missing(moco_ckpt, backbone18, tmp_path):
    out = tmp_path / "r18.pth"
    res = run("export", moco_ckpt, "--to", "torchvision", "-o", out)
    assert res.exit_code == 0, res.output
    assert "module.encoder_q." in res.output and f"wrote {out}" in res.output
    sd = torch.load(out, weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    assert all(torch.equal(sd[k], v) for k, v in backbone18.items())


def test_export_detectron2(moco_ckpt, tmp_path):
    out = tmp_path / "r18.pkl"
    res = run("export", moco_ckpt, "--to", "detectron2", "-o", out)
    assert res.exit_code == 0, res.output
    assert "STRIDE_IN_1X1 False" in res.output
    d = pickle.loads(out.read_bytes())
    assert d["matching_heuristics"] is True and "checkpoint_0200.pth.tar" in d["__author__"]
    res = run("export", moco_ckpt, "--to", "detectron2", "-o", tmp_path / "r18.pth")
    assert res.exit_code == 1 and "Error:" in res.output and "*.pkl" in res.output


def test_existing_output_needs_force(moco_ckpt, tmp_path):
    out = tmp_path / "r18.pth"
    out.write_bytes(b"precious")
    res = run("export", moco_ckpt, "--to", "torchvision", "-o", out)
    assert res.exit_code == 1 and "already exists; pass --force" in res.output
    assert out.read_bytes() == b"precious"
    res = run("export", moco_ckpt, "--to", "torchvision", "-o", out, "--force")
    assert res.exit_code == 0, res.output
    assert "conv1.weight" in torch.load(out, weights_only=True)


def test_failed_export_leaves_existing_output_untouched(backbone18, tmp_path):
    sd = dict(backbone18)
    del sd["layer3.0.downsample.0.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    out = tmp_path / "r18.pkl"
    out.write_bytes(b"precious")
    res = run("export", tmp_path / "broken.pth", "--to", "detectron2", "-o", out, "--force")
    assert res.exit_code == 1
    assert "missing backbone tensors (layer3.0.downsample.0.weight)" in res.output
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pth", "r18.pkl"]  # no temporary left


def test_small_stem_exports(tmp_path):
    from mochi.transfer import build_torchvision_resnet

    sd = {k: v for k, v in build_torchvision_resnet("resnet18", small_stem=True).state_dict().items()}
    torch.save({k: v for k, v in sd.items() if not k.startswith("fc.")}, tmp_path / "s.pth")
    res = run("export", tmp_path / "s.pth", "--to", "torchvision", "-o", tmp_path / "o.pth")
    assert res.exit_code == 0 and "small_stem=True" in res.output and "stem: small" in res.output
    res = run("export", tmp_path / "s.pth", "--to", "detectron2", "-o", tmp_path / "o.pkl")
    assert res.exit_code == 1 and "small-stem" in res.output and not (tmp_path / "o.pkl").exists()


def test_inspect_text_and_json(moco_ckpt):
    res = run("inspect", moco_ckpt)
    assert res.exit_code == 0, res.output
    expected = ("format      moco", "prefix      module.encoder_q.", "stem: standard", "fc.0.weight")
    for text in expected:
        assert text in res.output
    res = run("inspect", moco_ckpt, "--json")
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    assert d["arch"] == "resnet18" and d["encoder"] == "query" and d["num_loaded"] == 120 and d["ok"]
    assert d["head_dropped"] == ["fc.0.weight"] and d["missing"] == [] and len(d["sha256"]) == 64


def test_inspect_reports_then_fails_on_missing(backbone18, tmp_path):
    sd = dict(backbone18)
    del sd["bn1.weight"]
    torch.save(sd, tmp_path / "m.pth")
    res = run("inspect", tmp_path / "m.pth", "--json")
    assert res.exit_code == 1
    assert json.loads(res.stdout)["missing"] == ["bn1.weight"]
    assert "Error:" in res.stderr and "bn1.weight" in res.stderr


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 not really")
    res = run("inspect", tmp_path / "cut.pth")
    assert res.exit_code == 1 and "truncated or corrupt" in res.output and "Traceback" not in res.output
    torch.save({"arch": "resnet18"}, tmp_path / "empty.pth")
    res = run("export", tmp_path / "empty.pth", "--to", "torchvision", "-o", tmp_path / "o.pth")
    assert res.exit_code == 1 and "holds no tensors" in res.output


def test_inspect_refusals_and_stem_choice_from_the_command_line(tmp_path):
    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pth")
    res = run("export", tmp_path / "whole.pth", "--to", "torchvision", "-o", tmp_path / "out.pth")
    assert res.exit_code == 1 and "torchvision.models.resnet.ResNet" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out.pth").exists()
    small = torchvision.models.resnet18().state_dict()
    small["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(small, tmp_path / "cifar.pth")
    res = run("inspect", tmp_path / "cifar.pth")
    assert res.exit_code == 0 and "stem: small (assumed:" in res.output
    res = run("inspect", tmp_path / "cifar.pth", "--stem", "small-pad2", "--json")
    report = json.loads(res.output)
    assert res.exit_code == 0 and (report["stem"], report["stem_source"]) == ("small-pad2", "--stem")


def test_prefix_on_a_two_encoder_file_reports_the_encoder_it_picked(backbone18, tmp_path):
    """``--prefix module.encoder_k.`` picks the key encoder of a MoCo file: the report says "key" (not "single
    encoder"), loads the key's tensors and lists the query's as ignored."""
    sd = {f"module.encoder_q.{k}": v for k, v in backbone18.items()}
    sd |= {f"module.encoder_k.{k}": v + 1 if v.is_floating_point() else v for k, v in backbone18.items()}
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": sd}, tmp_path / "two.pth.tar")
    res = run("inspect", tmp_path / "two.pth.tar", "--prefix", "module.encoder_k.", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["encoder"] == "key" and d["prefix"] == "module.encoder_k." and d["num_loaded"] == len(backbone18)
    out = tmp_path / "key.pth"
    assert run("export", tmp_path / "two.pth.tar", "--prefix", "module.encoder_k.", "--to", "torchvision",
               "-o", out).exit_code == 0  # fmt: skip
    exported = torch.load(out, weights_only=True)
    assert torch.equal(exported["conv1.weight"], backbone18["conv1.weight"] + 1)
