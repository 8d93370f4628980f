import logging

import numpy as np
import pytest
import torch
import torchvision

from mochi.eval.backbones import load_eval_backbone
from mochi.eval.data import open_split
from mochi.eval.features import FeatureCache, get_features
from mochi.transforms import eval_transform

TF, SPEC = eval_transform(32)


@pytest.fixture(scope="module")
def tiny():
    return open_split("fashion-mnist-embedded", "test", transform=TF, limit=48)


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _get(bb, ds, cache, **kw):
    return get_features(bb, ds, transform_spec=SPEC, cache=cache, batch_size=16, **kw)


def test_features_equal_a_direct_forward(tiny):
    bb = load_eval_backbone(random_init=True, arch="resnet18")
    feats = _get(bb, tiny, None)
    model = load_eval_backbone(random_init=True, arch="resnet18").trunk().eval()
    with torch.no_grad():
        direct = model(torch.stack([tiny[i][0] for i in range(5)]))
    assert feats.features.shape == (48, 512) and np.allclose(feats.features[:5], direct.numpy(), atol=1e-5)
    assert (feats.labels == np.asarray(tiny.targets)).all()


def test_cache_hit_miss_and_damaged_rebuilt(tmp_path, tiny, caplog):
    cache = FeatureCache(tmp_path / "cache")
    a = _checkpoint(tmp_path / "a.pth", 0)
    first = _get(load_eval_backbone(a), tiny, cache)
    assert not first.from_cache
    hit = _get(load_eval_backbone(a), tiny, cache)
    assert hit.from_cache and np.array_equal(hit.features, first.features)
    # A changed checkpoint (different content at the same path) is a miss, not the old features.
    _checkpoint(a, 1)
    changed = _get(load_eval_backbone(a), tiny, cache)
    assert not changed.from_cache and not np.allclose(changed.features, first.features)
    expected = np.array(changed.features)  # a copy: the memory map would show the damage below
    # Damage one byte of the cached array: detected by the checksum and rebuilt.
    path = changed.path / "features.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        rebuilt = _get(load_eval_backbone(a), tiny, cache)
    assert not rebuilt.from_cache and "damaged" in caplog.text
    assert np.array_equal(rebuilt.features, expected)
    # Other settings (dtype) are another entry; float16 storage.
    half = _get(load_eval_backbone(a), tiny, cache, dtype="float16")
    assert half.features.dtype == np.float16 and not half.from_cache
    assert np.allclose(half.features, rebuilt.features, atol=1e-2, rtol=1e-2)


def test_key_encoder_is_another_cache_entry(tmp_path, tiny):
    torch.manual_seed(0)
    q, k = torchvision.models.resnet18().state_dict(), torchvision.models.resnet18().state_dict()
    sd = {f"module.encoder_q.{n}": v for n, v in q.items()} | {
        f"module.encoder_k.{n}": v for n, v in k.items()
    }
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": sd}, tmp_path / "moco.pth.tar")
    cache = FeatureCache(tmp_path / "cache")
    fq = _get(load_eval_backbone(tmp_path / "moco.pth.tar"), tiny, cache)
    fk = _get(load_eval_backbone(tmp_path / "moco.pth.tar", encoder="key"), tiny, cache)
    assert not fk.from_cache and fq.path != fk.path
    assert load_eval_backbone(tmp_path / "moco.pth.tar").evaluated["encoder"] == "query"


def test_a_full_disk_while_caching_leaves_no_entry_and_says_why(tmp_path, monkeypatch):
    import errno

    from mochi.errors import MochiError

    tiny = open_split("fashion-mnist-embedded", "test", transform=eval_transform(32)[0], limit=20)
    cache = FeatureCache(tmp_path / "cache")
    real = np.lib.format.open_memmap

    def full(path, *args, **kwargs):
        if kwargs.get("mode") == "w+" and str(path).endswith("labels.npy"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    with pytest.raises(MochiError, match="feature cache: cannot write .*no space left.*--no-cache"):
        _get(load_eval_backbone(random_init=True, arch="resnet18"), tiny, cache)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == []


def test_a_cache_hit_checks_size_and_time_and_hashes_only_on_demand(tmp_path, tiny, monkeypatch):
    import os

    from mochi.eval import features as features_mod

    cache = FeatureCache(tmp_path / "cache")
    bb = load_eval_backbone(random_init=True, arch="resnet18")
    built = _get(bb, tiny, cache)
    hashed = []
    real = features_mod.sha256_file
    monkeypatch.setattr(features_mod, "sha256_file", lambda p, *a: hashed.append(p.name) or real(p, *a))
    hit = _get(bb, tiny, cache)
    assert hit.from_cache and hashed == []  # size and modification time match: no re-read
    # Same size, modification time put back: only a full verification can see the change.
    path = built.path / "features.npy"
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _get(bb, tiny, cache).from_cache
    verified = _get(bb, tiny, FeatureCache(tmp_path / "cache", verify=True))
    assert not verified.from_cache and "features.npy" in hashed
    # A touched but intact file (a copy, a restore) is re-hashed once, found good, and used.
    hashed.clear()
    os.utime(verified.path / "labels.npy")
    again = _get(bb, tiny, cache)
    assert again.from_cache and hashed == ["labels.npy"]
