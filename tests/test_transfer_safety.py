"""Checkpoints from the internet: nothing in them runs; broken files give clear errors."""

import argparse
import pickle

import pytest
import torch

from mochi.errors import MochiError
from mochi.transfer import load_backbone, read_checkpoint


class _Evil:
    """Unpickling this creates a file: the marker proves code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_torch_file_is_refused_and_runs_nothing(backbone18, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": backbone18, "payload": _Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(MochiError, match="arbitrary unpickling.*--trust-checkpoint"):
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


def test_non_weights_objects_need_trust(backbone18, tmp_path):
    # e.g. DINO saves its argparse.Namespace: harmless here, but weights_only cannot know that.
    torch.save({"state_dict": backbone18, "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pth")
    with pytest.raises(MochiError, match="--trust-checkpoint"):
        load_backbone(tmp_path / "args.pth")
    sd, report = load_backbone(tmp_path / "args.pth", trust_checkpoint=True)
    assert report.ok and torch.equal(sd["conv1.weight"], backbone18["conv1.weight"])


@pytest.mark.parametrize("keep", [0, 10, 0.5, -40])
def test_truncated_torch_file(keep, backbone18, tmp_path):
    torch.save(backbone18, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    (tmp_path / "cut.pth").write_bytes(data[:cut])
    with pytest.raises(MochiError, match=r"cut\.pth (is truncated or corrupt|is empty|is neither)"):
        load_backbone(tmp_path / "cut.pth")


def test_truncated_pickle(backbone18, tmp_path):
    model = {"stem.conv1.weight": backbone18["conv1.weight"].numpy()}
    data = pickle.dumps({"model": model, "__author__": "x"})
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(MochiError, match=r"cut\.pkl is truncated or corrupt"):
        load_backbone(tmp_path / "cut.pkl")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MochiError, match="neither a PyTorch checkpoint nor a pickle"):
        read_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(MochiError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "absent.pth")
