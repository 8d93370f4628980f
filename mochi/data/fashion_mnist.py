"""Fashion-MNIST: the idx files of the full set (Debian's ``dataset-fashion-mnist`` or ``--data-root``) or the
embedded class-balanced 10k/2k subset. 28x28 grey, replicated to RGB.

torchvision's ``FashionMNIST`` reader expects its own ``raw/`` download layout and uncompressed files; the
idx format itself is a 4-byte magic and big-endian dimensions, read here straight from the ``.gz`` files.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from mochi.errors import MochiError

from .base import ArraySource, _check_labels, _check_nonempty, _few

ASSETS = Path(__file__).parent / "assets"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def load(key: str, split: str, root: str | None, **kwargs: Any) -> ArraySource:
    if key == "fashion-mnist-embedded":
        folder, source = ASSETS / "fashion_mnist", "embedded-subset"
    elif root is not None:
        # An explicit root that lacks the files is an error, not a silent fall-back to the subset.
        folder = Path(root).expanduser().resolve()
        missing = [
            folder / f for files in _FMNIST_FILES.values() for f in files if not (folder / f).is_file()
        ]
        if missing:
            raise MochiError(
                f"--data-root {folder} lacks the Fashion-MNIST idx files: {_few([str(m) for m in missing])}. "
                "Put the four {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz files there, or drop "
                "--data-root to use the Debian package or the embedded subset."
            )
        source = "idx-folder"
    elif all((DEBIAN_FASHION_MNIST / f).is_file() for files in _FMNIST_FILES.values() for f in files):
        # All four files, not just this split's two: train and test must come from the same release.
        folder, source = DEBIAN_FASHION_MNIST, "debian-full"
    else:
        folder, source = ASSETS / "fashion_mnist", "embedded-subset"
    image_file, label_file = (folder / f for f in _FMNIST_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise MochiError(
            f"{image_file} / {label_file} do not hold matching images (N, H, W) and labels (N,): got shapes "
            f"{images.shape} and {labels.shape}. Replace them with the original Fashion-MNIST files."
        )
    _check_nonempty(len(images), image_file)
    _check_labels(labels, 10, label_file)
    identity = {
        "name": key,
        "split": split,
        "root": "embedded" if source == "embedded-subset" else str(folder),
        "subset": None,
        "source": source,
    }
    return ArraySource(images, labels.astype(np.int64), list(FASHION_MNIST_CLASSES), identity, **kwargs)


# idx type byte -> numpy dtype (multi-byte types are big-endian).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or raw): magic ``0 0 <type> <ndim>``, ``ndim`` big-endian uint32 dims."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise MochiError(f"cannot read idx file {path}: {err}. Replace it with an intact copy.") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise MochiError(f"{path} is not an idx file (bad magic number). Replace it with an intact copy.")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    dims = (
        tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4)) if len(raw) >= header else ()
    )
    if len(dims) != ndim or len(raw) - header != int(np.prod(dims)) * dtype.itemsize:
        raise MochiError(
            f"{path} is truncated or malformed (header says {dims}). Replace it with an intact copy."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)
