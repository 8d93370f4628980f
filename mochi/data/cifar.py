"""CIFAR-10 / CIFAR-100: the python batches (``cifar-10-batches-py/``, ``cifar-100-python/``). 32x32 RGB.

torchvision's ``CIFAR10`` reader calls ``pickle.load`` on the batches, which can run code from a crafted
file; these batches are read with the restricted unpickler instead (numpy arrays and plain containers only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mochi.errors import MochiError
from mochi.safe_pickle import safe_load

from .base import ArraySource, _check_labels, _check_nonempty, _dataset_folder, _few

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _cifar(key: str, split: str, root: str | None, **kwargs: Any) -> ArraySource:
    if key == "cifar10":
        folder_name, meta_name, label_key, names_key, n_classes = (
            "cifar-10-batches-py", "batches.meta", "labels", "label_names", 10,
        )  # fmt: skip
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    else:
        folder_name, meta_name, label_key, names_key, n_classes = (
            "cifar-100-python", "meta", "fine_labels", "fine_label_names", 100,
        )  # fmt: skip
        files = [split]
        url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    folder = _dataset_folder(key, root, folder_name, files[0], url)
    missing = [str(folder / f) for f in files if not (folder / f).is_file()]
    if missing:
        raise MochiError(
            f"{key} {split} files missing: {_few(missing)}. Re-extract {url} under --data-root "
            f"so that {folder_name}/ holds {', '.join(files)}."
        )
    images, labels = [], []
    for f in files:
        batch = _unpickle(folder / f)
        data, batch_labels = _field(batch, "data", folder / f), _field(batch, label_key, folder / f)
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise MochiError(
                f"{folder / f} does not hold CIFAR data: expected 'data' (N, 3072) and N labels, got "
                f"{data.shape} and {len(batch_labels)} labels. Re-extract {url}."
            )
        # Rows are channel-major (1024 R, 1024 G, 1024 B), each channel row-major: -> (N, 32, 32, 3).
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    images_np, labels_np = np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)
    _check_nonempty(len(images_np), folder)
    _check_labels(labels_np, n_classes, folder / files[0])
    classes = [str(i) for i in range(n_classes)] if key == "cifar100" else list(CIFAR10_CLASSES)
    if (folder / meta_name).is_file():
        names = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in _field(_unpickle(folder / meta_name), names_key, folder / meta_name)
        ]
        if len(names) == n_classes:
            classes = names
    identity = {"name": key, "split": split, "root": str(folder), "subset": None, "source": f"{key}-python"}
    return ArraySource(images_np, labels_np, classes, identity, **kwargs)


def _unpickle(path: Path) -> dict:
    try:
        obj = safe_load(path, encoding="latin1")
    except Exception as err:  # UnpicklingError, UnsafePickleError, EOFError...: all mean "not a CIFAR batch"
        raise MochiError(
            f"cannot read {path} as a CIFAR python batch: {err}. Re-extract the archive."
        ) from err
    if not isinstance(obj, dict):
        raise MochiError(
            f"{path} is not a CIFAR python batch (got {type(obj).__name__}). Re-extract the archive."
        )
    return obj


def _field(batch: dict, key: str, path: Path) -> Any:
    # Python-2 pickles decoded as latin1 give str keys; pickles written from Python 3 bytes give bytes keys.
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise MochiError(f"{path} has no {key!r} entry: not a CIFAR python batch. Re-extract the archive.")
