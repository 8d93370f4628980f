"""Rebuild the embedded Fashion-MNIST subset in mochi/data/assets/fashion_mnist/.

Takes the first ``--train-per-class`` images of each class from the training split and the first
``--test-per-class`` of each class from the test split, in file order, and writes them in the
original idx format (gzip, mtime 0, so the output is byte-for-byte reproducible).

    python scripts/make_fashion_mnist_subset.py /usr/share/datasets/fashion-mnist
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
        fh.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="folder with the four original idx .gz files")
    p.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "mochi/data/assets/fashion_mnist")
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=200)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    splits = (("train", "train", a.train_per_class), ("test", "t10k", a.test_per_class))
    for split, prefix, per_class in splits:
        images = read_idx(a.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(a.source / f"{prefix}-labels-idx1-ubyte.gz")
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
        write_idx(a.out / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx(a.out / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{split}: {len(keep)} images")


if __name__ == "__main__":
    main()
