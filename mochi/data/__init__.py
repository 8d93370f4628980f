"""Dataset sources: a name (or folder) and a split -> a map-style dataset of ``(transform(img), target)``.

Built-in names (see :data:`DATASET_NAMES`), one module each:

- ``fashion-mnist`` (:mod:`.fashion_mnist`): the full 60k/10k set from Debian's ``dataset-fashion-mnist`` (or
  ``root``) when its four idx ``.gz`` files are there, else the embedded class-balanced 10k/2k subset;
  ``fashion-mnist-embedded`` always uses the subset. 28x28, grey replicated to RGB.
- ``cifar10`` / ``cifar100`` (:mod:`.cifar`): the python batches under ``root``, read with the restricted
  unpickler. 32x32 RGB.
- ``stl10`` (:mod:`.stl10`): the binary files under ``root`` (``stl10_binary/``), memory-mapped. 96x96 RGB.

Any other name is the path of an image folder (:mod:`.folders`): ``<path>/<split>/<class>/*.jpg`` (ImageNet
layout) or ``<path>/<class>/*.jpg``; ``subset="imagenet100"`` keeps the 100 ImageNet-100 synsets.

Every dataset returns PIL RGB images (before ``transform``) and integer targets (-1 = unlabeled), carries
``classes``, ``targets`` and ``identity()`` (a JSON-able description for checkpoints and result records),
and pickles cheaply for DataLoader workers (:mod:`.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mochi.errors import MochiError

from . import fashion_mnist as _fmnist
from .base import ArraySource, LimitedDataset, SourceDataset
from .cifar import _cifar
from .fashion_mnist import read_idx
from .folders import SUBSETS, ImageFolderSource, _image_folder
from .stl10 import STL10Source, _stl10

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "SUBSETS",
    "ArraySource",
    "ImageFolderSource",
    "LimitedDataset",
    "STL10Source",
    "SourceDataset",
    "load_dataset",
    "read_idx",
]

DATASET_NAMES: tuple[str, ...] = ("fashion-mnist", "fashion-mnist-embedded", "cifar10", "cifar100", "stl10")
# Splits each built-in accepts; image folders accept any split that exists as a sub-folder.
SPLITS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("train", "test"),
    "fashion-mnist-embedded": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
}
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
}


def load_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | None = None,
    subset: str | None = None,
    transform: Callable | None = None,
    on_corrupt: str = "error",
) -> SourceDataset:
    """Open dataset ``name`` (a built-in name or an image-folder path) at ``split``.

    Args:
        name: one of :data:`DATASET_NAMES`, or the path of an image folder (relative paths are taken under
            ``root`` when ``root`` is given).
        split: ``train`` / ``test`` (built-ins; STL-10 also ``unlabeled``, ``train+unlabeled``), or for an
            image folder the name of its split sub-folder (``train``, ``val``...).
        root: where the files are: required for CIFAR and STL-10 (the parent of the dataset folder or the
            folder itself); for ``fashion-mnist`` a folder with the four idx ``.gz`` files.
        subset: image folders only: ``"imagenet100"`` or a text file with one class name per line.
        transform: applied to the PIL RGB image of each item.
        on_corrupt: ``"error"`` (raise naming the file) or ``"skip"`` (use the next readable image, count it).

    Raises:
        MochiError: unknown name or split, missing files, empty dataset, bad subset: before any work starts.
    """
    if on_corrupt not in ("error", "skip"):
        raise MochiError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}.")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in DATASET_NAMES:
        if split not in SPLITS[key]:
            raise MochiError(f"unknown split {split!r} for {key}: use one of {', '.join(SPLITS[key])}.")
        if subset is not None:
            raise MochiError(
                f"subset {subset!r} applies to image folders only, not to {key}: drop the subset option."
            )
        kwargs = {"transform": transform, "on_corrupt": on_corrupt}
        if key.startswith("fashion-mnist"):
            return _fmnist.load(key, split, root, **kwargs)
        if key.startswith("cifar"):
            return _cifar(key, split, root, **kwargs)
        return _stl10(split, root, **kwargs)

    path = Path(name).expanduser()
    if root is not None and not path.is_absolute():
        path = Path(root).expanduser() / path
    if not path.exists():
        raise MochiError(
            f"unknown dataset {name!r}: not a built-in name ({', '.join(DATASET_NAMES)}) and no folder at "
            f"{path.resolve()}. Pass a built-in name, or the path of an image folder laid out as "
            "<path>/train/<class>/<image> or <path>/<class>/<image>."
        )
    if not path.is_dir():
        raise MochiError(f"--data {name!r} is a file, not a folder: pass the folder holding <class>/<image>.")
    return _image_folder(name, path.resolve(), split, subset, transform=transform, on_corrupt=on_corrupt)
