"""One small test per dataset source (split sizes, label ranges, image size/mode), then the error paths."""

import gzip
import json
import logging
import pickle
import re

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from mochi import data
from mochi.data import DATASET_NAMES, load_dataset, read_idx
from mochi.errors import MochiError


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def _png(path, color=(255, 0, 0), size=(6, 4), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def _check_items(ds, size):
    img, target = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == size
    assert isinstance(target, int)
    json.dumps(ds.identity())  # records and checkpoints store it as JSON


# --- Fashion-MNIST -------------------------------------------------------------------------------------


def test_fashion_mnist_embedded_splits_and_balance():
    for split, n in (("train", 10000), ("test", 2000)):
        ds = load_dataset("fashion-mnist-embedded", split)
        assert len(ds) == n and len(ds.classes) == 10
        assert np.bincount(ds.targets).tolist() == [n // 10] * 10
        _check_items(ds, (28, 28))
        r, g, b = (np.asarray(c) for c in ds[1][0].split())
        assert (r == g).all() and (g == b).all() and r.any()  # grey replicated to RGB
        ident = ds.identity()
        assert ident["root"] == "embedded" and ident["source"] == "embedded-subset"
        assert ident["num_images"] == n and ident["num_classes"] == 10


def _write_fmnist(folder, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
        arrays[split] = images, labels
    return arrays


def test_fashion_mnist_prefers_full_set_when_present(tmp_path, monkeypatch):
    arrays = _write_fmnist(tmp_path)
    ds = load_dataset("fashion-mnist", "train", root=str(tmp_path))
    assert len(ds) == 30 and ds.identity()["source"] == "idx-folder"
    assert ds.identity()["root"] == str(tmp_path.resolve())
    np.testing.assert_array_equal(np.asarray(ds[7][0])[..., 0], arrays["train"][0][7])
    assert ds[7][1] == 7
    assert len(load_dataset("fashion-mnist", "test", root=str(tmp_path))) == 10

    # Without root: the Debian folder when all four files are there, else the embedded subset.
    monkeypatch.setattr(data.fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path)
    ds = load_dataset("fashion-mnist", "test")
    assert len(ds) == 10 and ds.identity()["source"] == "debian-full"
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    ds = load_dataset("fashion-mnist", "train")
    assert len(ds) == 10000 and ds.identity()["source"] == "embedded-subset"

    # An explicit root lacking the files is an error, not a silent fall-back.
    with pytest.raises(MochiError, match=re.escape(str(tmp_path / "t10k-labels-idx1-ubyte.gz"))):
        load_dataset("fashion-mnist", root=str(tmp_path))


def test_read_idx_rejects_truncated(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    _write_idx(path, np.zeros((3, 4, 4), np.uint8))
    assert read_idx(path).shape == (3, 4, 4)
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    with gzip.open(path, "wb") as fh:
        fh.write(raw[:-5])
    with pytest.raises(MochiError, match="truncated or malformed"):
        read_idx(path)


# --- CIFAR ---------------------------------------------------------------------------------------------


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    # The documented layout: per image, 1024 red then green then blue values, each channel row-major.
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    known = {}
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        known[name] = images
        # Keys as bytes, as a pickle written from Python 3 bytes keys comes back.
        batch = {b"data": _cifar_rows(images), b"labels": [9, 0, 3][:n], b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))

    for root in (tmp_path, folder):  # parent or the batches folder itself
        ds = load_dataset("cifar10", "train", root=str(root))
        assert len(ds) == 10 and ds.classes == [f"class{i}" for i in range(10)]
        assert set(np.asarray(ds.targets).tolist()) == {0, 9}
    _check_items(ds, (32, 32))
    np.testing.assert_array_equal(np.asarray(ds[2][0]), known["data_batch_2"][0])  # orientation round trip
    test = load_dataset("cifar10", "test", root=str(tmp_path))
    assert len(test) == 3 and list(test.targets) == [9, 0, 3]
    assert test.identity()["source"] == "cifar10-python" and test.identity()["root"] == str(folder)


def test_cifar100_python_batches_str_keys(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 4), ("test", 2)):
        images = np.zeros((n, 32, 32, 3), np.uint8)
        batch = {"data": _cifar_rows(images), "fine_labels": [0, 99, 50, 1][:n], "coarse_labels": [0] * n}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(
        pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2)
    )
    ds = load_dataset("cifar100", "train", root=str(tmp_path))
    assert len(ds) == 4 and len(ds.classes) == 100 and ds.classes[99] == "c99"
    assert min(ds.targets) == 0 and max(ds.targets) == 99
    _check_items(ds, (32, 32))
    assert len(load_dataset("cifar100", "test", root=str(tmp_path))) == 2


def test_cifar_errors_name_the_expected_path(tmp_path):
    with pytest.raises(MochiError, match="needs --data-root"):
        load_dataset("cifar10")
    with pytest.raises(MochiError, match=re.escape(str(tmp_path / "cifar-100-python"))):
        load_dataset("cifar100", root=str(tmp_path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(MochiError, match=re.escape(str(folder / "data_batch_2"))):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(MochiError, match="cannot read .*test_batch"):
        (folder / "test_batch").write_bytes(b"not a pickle")
        load_dataset("cifar10", "test", root=str(tmp_path))


# --- STL-10 --------------------------------------------------------------------------------------------


def _stl_bytes(images: np.ndarray) -> bytes:
    # The documented layout: per image, each channel's 96x96 pixels in column-major order.
    return b"".join(img[:, :, c].ravel(order="F").tobytes() for img in images for c in range(3))


def test_stl10_binary_orientation_and_splits(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    train[0, :10, :40] = (255, 0, 0)  # a wide red band at the top: a transpose would make it tall
    unlabeled = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    (folder / "train_X.bin").write_bytes(_stl_bytes(train))
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 5]))
    (folder / "test_X.bin").write_bytes(_stl_bytes(train[:1]))
    (folder / "test_y.bin").write_bytes(bytes([2]))
    (folder / "unlabeled_X.bin").write_bytes(_stl_bytes(unlabeled))
    (folder / "class_names.txt").write_text("\n".join(f"s{i}" for i in range(10)) + "\n")

    ds = load_dataset("stl10", "train", root=str(tmp_path))
    assert len(ds) == 3 and list(ds.targets) == [0, 9, 4] and ds.classes[0] == "s0"
    _check_items(ds, (96, 96))
    first = np.asarray(ds[0][0])
    np.testing.assert_array_equal(first, train[0])
    assert (first[:10, :40] == (255, 0, 0)).all()
    assert len(load_dataset("stl10", "test", root=str(folder))) == 1

    unl = load_dataset("stl10", "unlabeled", root=str(tmp_path))
    assert len(unl) == 2 and list(unl.targets) == [-1, -1]
    both = load_dataset("stl10", "train+unlabeled", root=str(tmp_path))
    assert len(both) == 5 and list(both.targets) == [0, 9, 4, -1, -1]
    np.testing.assert_array_equal(np.asarray(both[4][0]), unlabeled[1])
    assert both[4][1] == -1
    # Picklable for workers after a memmap was opened; the copy reopens it lazily.
    copy = pickle.loads(pickle.dumps(both))
    assert copy._maps == {} and np.array_equal(np.asarray(copy[3][0]), unlabeled[0])

    (folder / "unlabeled_X.bin").write_bytes(_stl_bytes(unlabeled)[:-7])
    with pytest.raises(MochiError, match="truncated"):
        load_dataset("stl10", "unlabeled", root=str(tmp_path))
    with pytest.raises(MochiError, match="unknown split 'val' for stl10"):
        load_dataset("stl10", "val", root=str(tmp_path))


# --- Image folders -------------------------------------------------------------------------------------


def test_image_folder_split_layout(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("dog", "cat"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png")
    _png(tmp_path / "train" / "cat" / "grey.PNG", mode="L", size=(5, 7))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".cache").mkdir()  # hidden folders are not classes

    ds = load_dataset(str(tmp_path), "train")
    assert ds.classes == ["cat", "dog"] and len(ds) == 7
    assert sorted(np.bincount(ds.targets).tolist()) == [3, 4]
    _check_items(ds, (6, 4))
    grey = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("grey.PNG")][0]
    assert ds[grey][0].mode == "RGB" and ds[grey][0].size == (5, 7)
    ident = ds.identity()
    assert ident["source"] == "imagefolder" and ident["root"] == str((tmp_path / "train").resolve())
    assert len(load_dataset(str(tmp_path), "val")) == 2
    with pytest.raises(MochiError, match=r"no 'test' split .*found split folders train, val"):
        load_dataset(str(tmp_path), "test")
    # A relative name is taken under root.
    assert len(load_dataset(tmp_path.name, "val", root=str(tmp_path.parent))) == 2


def test_image_folder_direct_layout_and_transform(tmp_path):
    _png(tmp_path / "a" / "0.png", color=(0, 255, 0))
    _png(tmp_path / "b" / "0.jpg")
    ds = load_dataset(str(tmp_path), "train", transform=lambda im: np.asarray(im).shape)
    assert ds.classes == ["a", "b"] and len(ds) == 2
    assert ds[0] == ((4, 6, 3), 0) and ds[1][1] == 1 and ds[-1][1] == 1
    with pytest.raises(IndexError):
        ds[2]


def _all_synsets():
    return (data.folders.ASSETS / "imagenet100.txt").read_text().split()


def test_imagenet100_subset_keeps_listed_synsets(tmp_path):
    synsets = _all_synsets()
    assert len(synsets) == 100
    for s in synsets + ["n99999999"]:
        _png(tmp_path / "train" / s / "x.JPEG", size=(2, 2))
    ds = load_dataset(str(tmp_path), "train", subset="imagenet100")
    assert ds.classes == sorted(synsets) and "n99999999" not in ds.classes and len(ds) == 100
    assert ds.identity()["subset"] == "imagenet100"
    assert len(load_dataset(str(tmp_path), "train")) == 101

    for s in synsets[:3]:
        for f in (tmp_path / "train" / s).iterdir():
            f.unlink()
        (tmp_path / "train" / s).rmdir()
    with pytest.raises(MochiError, match=rf"3 of the 100 subset classes .*{synsets[0]}"):
        load_dataset(str(tmp_path), "train", subset="imagenet100")


def test_subset_file_and_subset_errors(tmp_path):
    for cls in ("a", "b", "c"):
        _png(tmp_path / cls / "0.png")
    listing = tmp_path / "keep.txt"
    listing.write_text("# my classes\nc\n\na\n")
    ds = load_dataset(str(tmp_path), subset=str(listing))
    assert ds.classes == ["a", "c"] and list(ds.targets) == [0, 1]
    with pytest.raises(MochiError, match="unknown subset 'imagenet1000'.*imagenet100"):
        load_dataset(str(tmp_path), subset="imagenet1000")
    with pytest.raises(MochiError, match="image folders only"):
        load_dataset("fashion-mnist-embedded", subset="imagenet100")


# --- Errors --------------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(
        MochiError, match="unknown dataset 'imagenet-21k'.*fashion-mnist, fashion-mnist-embedded"
    ):
        load_dataset("imagenet-21k")
    with pytest.raises(MochiError, match="unknown split 'val' for fashion-mnist"):
        load_dataset("fashion-mnist-embedded", "val")
    with pytest.raises(MochiError, match="on_corrupt"):
        load_dataset("fashion-mnist-embedded", on_corrupt="ignore")
    assert "stl10" in DATASET_NAMES


def test_missing_and_empty_folders(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MochiError, match=re.escape(str(missing)) + ".*<path>/train/<class>/<image>"):
        load_dataset(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MochiError, match=re.escape(str(empty)) + ": the image folder is empty"):
        load_dataset(str(empty))
    (empty / "cls").mkdir()
    (empty / "cls" / "readme.txt").write_text("x")
    with pytest.raises(MochiError, match="no images found under " + re.escape(str(empty))):
        load_dataset(str(empty))
    _png(empty / "other" / "0.png")
    with pytest.raises(MochiError, match="1 class folders .* hold no images: cls"):
        load_dataset(str(empty))


def _corrupt_folder(tmp_path, suffix):
    for i in range(3):
        _png(tmp_path / ("a" if i < 2 else "b") / f"{i}.png", color=(i * 100, 0, 0))
    good = tmp_path / "b" / f"good{suffix}"
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good)
    bad = tmp_path / "a" / f"1bad{suffix}"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) * 2 // 3])  # header intact, pixels cut
    with Image.open(bad) as im:  # opening alone succeeds: only a full decode finds the damage
        assert im.size == (64, 64)
    return bad


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_corrupt_image_error_names_file(tmp_path, suffix):
    bad = _corrupt_folder(tmp_path, suffix)
    ds = load_dataset(str(tmp_path))
    i = [p for p, _ in ds.samples].index(str(bad.resolve()))
    with pytest.raises(MochiError, match=re.escape(str(bad.resolve())) + ".*--skip-corrupt"):
        ds[i]


def test_corrupt_image_skip_substitutes_and_counts(tmp_path, caplog):
    bad = _corrupt_folder(tmp_path, ".png")
    ds = load_dataset(str(tmp_path), on_corrupt="skip")
    paths = [p for p, _ in ds.samples]
    i = paths.index(str(bad.resolve()))
    with caplog.at_level(logging.WARNING, logger="mochi.data"):
        img, target = ds[i]
    assert np.array_equal(np.asarray(img), np.asarray(ds[i + 1][0])) and target == ds.targets[i + 1]
    assert ds.corrupt_count() == 1 and str(bad.resolve()) in caplog.text
    # The counter is shared with DataLoader workers; a plain pickle still works (with its own counter).
    loader = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda x: x)
    assert len(list(loader)) == len(ds)
    assert ds.corrupt_count() == 2
    assert pickle.loads(pickle.dumps(ds)).corrupt_count() == 0


def test_skip_gives_up_when_everything_is_corrupt(tmp_path):
    for i in range(2):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = load_dataset(str(tmp_path), on_corrupt="skip")
    with pytest.raises(MochiError, match="2 consecutive unreadable images"):
        ds[0]
    assert ds.corrupt_count() == 2


def _identity(x):
    return x


@pytest.mark.slow
def test_skip_counter_shared_with_spawned_workers(tmp_path):
    bad = _corrupt_folder(tmp_path, ".png")
    ds = load_dataset(str(tmp_path), on_corrupt="skip")
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, collate_fn=_identity, multiprocessing_context="spawn"
    )
    assert len(list(loader)) == len(ds) and bad.exists()
    assert ds.corrupt_count() == 1


def test_limit_is_a_fixed_random_subset_across_classes(tmp_path):
    from mochi.data import LimitedDataset

    for c in range(4):
        (tmp_path / f"c{c}").mkdir()
        for i in range(10):
            Image.new("RGB", (4, 4), (c * 60, i, 0)).save(tmp_path / f"c{c}" / f"{i}.png")
    ds = load_dataset(str(tmp_path))
    a, b = LimitedDataset(ds, 8, seed=0), LimitedDataset(ds, 8, seed=0)
    assert len(a) == 8 and list(a.indices) == list(b.indices)  # reproducible
    # the first 8 files would hold classes 0 and 1 only: a limit must not drop classes like that
    assert len(set(a.targets.tolist())) >= 3
    assert [a[i][1] for i in range(8)] == a.targets.tolist()
    assert a.identity()["limit"] == 8 and a.identity()["of"] == 40
    with pytest.raises(MochiError, match="must be >= 1"):
        LimitedDataset(ds, 0)


def test_16_bit_greyscale_images_are_scaled_not_clipped(tmp_path):
    # Pillow's RGB conversion clips 16-bit values at 255 (99.6% white here); the folder source scales them.
    values = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(values).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b" / "y.png")
    ds = load_dataset(str(tmp_path))
    img, target = ds[0]
    got = np.asarray(img)
    assert img.mode == "RGB" and target == 0
    np.testing.assert_array_equal(got[..., 0], np.rint(values * 255.0 / 65535.0).astype(np.uint8))
    assert (got == 255).mean() < 0.01


def test_images_wider_than_16_bit_are_refused_by_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((8, 8), 1 << 20, np.int32), "I").save(tmp_path / "a" / "wide.tif")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b" / "y.png")
    with pytest.raises(MochiError, match=r"wide\.tif.*only 8- and 16-bit images"):
        load_dataset(str(tmp_path))[0]


def test_a_corrupt_image_read_by_a_loader_worker_gives_the_one_line_error(tmp_path):
    bad = _corrupt_folder(tmp_path, ".png")
    ds = load_dataset(str(tmp_path), transform=lambda img: np.asarray(img).sum())
    with pytest.raises(MochiError) as err:
        list(DataLoader(ds, batch_size=4, num_workers=1))
    message = str(err.value)
    assert message.startswith(f"cannot read image {bad.resolve()}") and "--skip-corrupt" in message
    assert "Traceback" not in message and "\n" not in message
