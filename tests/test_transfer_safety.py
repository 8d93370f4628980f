"""Checkpoints from the internet: nothing in them runs; broken files give clear errors."""

import argparse
import pathlib
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torchvision

from mochi.errors import MochiError
from mochi.transfer import export_backbone, load_backbone, read_checkpoint
from mochi.transfer.loading import Inert


class _Evil:
    """Unpickling this creates a file: the marker proves code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_torch_file_is_refused_and_runs_nothing(backbone18, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": backbone18, "payload": _Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(MochiError, match=r"references io\.open.*arbitrary unpickling.*--trust-checkpoint"):
        load_backbone(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["evil.pkl", "evil.pth"])
def test_malicious_pickle_is_refused_and_runs_nothing(name, tmp_path):
    marker = tmp_path / "pwned"
    payload = {"model": {"stem.conv1.weight": _Evil(marker)}, "__author__": "x"}
    (tmp_path / name).write_bytes(pickle.dumps(payload))
    with pytest.raises(MochiError, match=r"refusing to load .*io\.open.*--trust-checkpoint"):
        load_backbone(tmp_path / name)
    assert not marker.exists()


def test_namespace_of_plain_values_loads(backbone18, tmp_path):
    # DINO, timm train.py and torchvision's reference scripts save their argparse.Namespace as "args".
    args = argparse.Namespace(lr=0.1, arch="resnet18", milestones=[30, 60], amp=None)
    torch.save({"model": backbone18, "args": args, "epoch": 3}, tmp_path / "args.pth")
    obj, _ = read_checkpoint(tmp_path / "args.pth")
    assert vars(obj["args"]) == vars(args)
    sd, report = load_backbone(tmp_path / "args.pth")
    assert report.ok and torch.equal(sd["conv1.weight"], backbone18["conv1.weight"])


def test_namespace_holding_other_objects_is_refused_by_name(backbone18, tmp_path):
    args = argparse.Namespace(lr=0.1, output_dir=pathlib.PosixPath("runs"))
    torch.save({"model": backbone18, "args": args}, tmp_path / "args.pth")
    with pytest.raises(MochiError, match=r"references pathlib\.PosixPath, which are not.*--trust-checkpoint"):
        load_backbone(tmp_path / "args.pth")
    sd, report = load_backbone(tmp_path / "args.pth", trust_checkpoint=True)
    assert report.ok and torch.equal(sd["conv1.weight"], backbone18["conv1.weight"])


@pytest.mark.parametrize("keep", [0, 10, 0.5, -40])
def test_truncated_torch_file(keep, backbone18, tmp_path):
    torch.save(backbone18, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    (tmp_path / "cut.pth").write_bytes(data[:cut])
    with pytest.raises(MochiError, match=r"cut\.pth (is a damaged file: truncated or corrupt|is empty)"):
        load_backbone(tmp_path / "cut.pth")


def test_truncated_pickle(backbone18, tmp_path):
    model = {"stem.conv1.weight": backbone18["conv1.weight"].numpy()}
    data = pickle.dumps({"model": model, "__author__": "x"})
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(MochiError, match=r"cut\.pkl is a damaged file: truncated or corrupt"):
        load_backbone(tmp_path / "cut.pkl")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MochiError, match="notes.txt: unsupported format .*not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(MochiError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "absent.pth")


def test_safetensors_file_loads(backbone18, tmp_path):
    from safetensors.torch import save_file

    save_file({**backbone18, "fc.weight": torch.randn(10, 512)}, tmp_path / "model.safetensors")
    sd, report = load_backbone(tmp_path / "model.safetensors")
    assert report.ok and report.format == "safetensors" and report.head_dropped == ["fc.weight"]
    assert all(torch.equal(sd[k], v) for k, v in backbone18.items())


def test_damaged_safetensors_is_called_damaged(backbone18, tmp_path):
    from safetensors.torch import save_file

    save_file(backbone18, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MochiError, match=r"cut\.safetensors is a damaged (safetensors )?file"):
        load_backbone(tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[:200])
    with pytest.raises(
        MochiError, match=r"head\.safetensors is a damaged safetensors file: its header claims"
    ):
        load_backbone(tmp_path / "head.safetensors")


def test_valid_files_of_other_formats_are_unsupported_not_corrupt(tmp_path):
    import numpy as np

    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    (tmp_path / "w.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    for name, what in (("w.npz", "zip archive that is not a PyTorch checkpoint"), ("w.h5", "HDF5")):
        with pytest.raises(MochiError, match=rf"{name}: unsupported format \(.*{what}") as err:
            load_backbone(tmp_path / name)
        assert "corrupt" not in str(err.value) and "damaged" not in str(err.value)


def _save_with_framework_class(obj_factory, module, path, monkeypatch):
    """torch.save an object of a class from ``module`` that exists only while saving (not installed)."""
    parts = module.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    torch.save(obj_factory(sys.modules[module]), path)
    for name in names:
        monkeypatch.delitem(sys.modules, name)


def test_openmmlab_training_checkpoint_loads_without_the_framework(backbone18, tmp_path, monkeypatch):
    """MMEngine's saving layout (``meta``, ``state_dict``, ``message_hub`` of HistoryBuffers, numpy arrays),
    built from its documented layout: mmengine is not installed here, as for most users of the weights."""
    path = tmp_path / "epoch_200.pth"

    def build(mod):
        class HistoryBuffer:
            def __init__(self):
                self._log_history = np.array([0.5, 0.25])
                self._count_history = np.array([1, 1])

        HistoryBuffer.__module__, HistoryBuffer.__qualname__ = mod.__name__, "HistoryBuffer"
        mod.HistoryBuffer = HistoryBuffer
        hub = {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"epoch": 200}}
        sd = {"backbone." + k: v for k, v in backbone18.items()}
        return {"meta": {"mmengine_version": "0.10.4"}, "state_dict": sd, "message_hub": hub}

    _save_with_framework_class(build, "mmengine.logging.history_buffer", path, monkeypatch)
    for trust in (False, True):  # --trust-checkpoint no longer dies on the missing framework
        sd, report = load_backbone(path, trust_checkpoint=trust)
        assert report.ok and report.format == "mmselfsup" and report.prefix == "backbone."
        assert all(torch.equal(sd[k], v) for k, v in backbone18.items())
    hub = read_checkpoint(path)[0]["message_hub"]
    assert hub["runtime_info"] == {"epoch": 200} and isinstance(hub["log_scalars"]["train/loss"], Inert)


def test_other_missing_framework_under_trust_is_one_clear_error(backbone18, tmp_path, monkeypatch):
    def build(mod):
        class Config:
            pass

        Config.__module__, Config.__qualname__ = mod.__name__, "Config"
        mod.Config = Config
        return {"state_dict": backbone18, "cfg": Config()}

    _save_with_framework_class(build, "someframework", tmp_path / "c.pth", monkeypatch)
    with pytest.raises(MochiError, match=r"references someframework\.Config.*--trust-checkpoint"):
        load_backbone(tmp_path / "c.pth")
    with pytest.raises(MochiError, match=r"needs the Python package 'someframework'.*not installed"):
        load_backbone(tmp_path / "c.pth", trust_checkpoint=True)


def test_whole_pickled_model(tmp_path):
    model = torchvision.models.resnet18()
    torch.save(model, tmp_path / "model.pth")
    out = tmp_path / "out.pth"
    with pytest.raises(MochiError, match=r"torchvision\.models\.resnet\.ResNet.*whole pickled model"):
        export_backbone(tmp_path / "model.pth", out, to="torchvision")
    assert not out.exists()
    sd, report = load_backbone(tmp_path / "model.pth", trust_checkpoint=True)
    assert report.ok and all(torch.equal(sd[k], v) for k, v in model.state_dict().items() if k in sd)
