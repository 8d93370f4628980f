"""Image folders: torchvision's ``DatasetFolder`` scan of ``<path>/<split>/<class>/*.jpg`` (or
``<path>/<class>/``), restricted to a class subset (``imagenet100`` or a list file)
before any file is scanned.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, DatasetFolder

from mochi.errors import MochiError

from .base import SourceDataset, _few

logger = logging.getLogger("mochi.data")

ASSETS = Path(__file__).parent / "assets"
# imagenet100: CMC's list of 100 ImageNet-1k synsets, shipped unchanged (docs/protocols.md#imagenet-100).
SUBSETS: tuple[str, ...] = ("imagenet100",)
# Split folder names that mark the ImageNet layout (<path>/<split>/<class>/...).
_SPLIT_FOLDERS = ("train", "val", "test")


# Pillow's integer modes: 16-bit greyscale (PNG, TIFF) and 32-bit integer.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_rgb(path: str) -> Image.Image:
    """Open and fully decode an image file as RGB (a truncated file fails here, not later in a transform).

    16-bit greyscale images are scaled to 8 bits (``v * 255 / 65535``): Pillow's own RGB conversion clips
    them instead, which turns almost every pixel white. Integer images beyond 16 bits are refused.
    """
    with open(path, "rb") as fh:
        img = Image.open(fh)
        if img.mode in _WIDE_INT_MODES:
            return _wide_to_rgb(img, path)
        return img.convert("RGB")


def _wide_to_rgb(img: Image.Image, path: str) -> Image.Image:
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"{img.mode} image with values {values.min()}..{values.max()}: only 8- and 16-bit images are "
            "supported; convert it to 8-bit"
        )
    grey = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


class ImageFolderSource(SourceDataset, DatasetFolder):
    """An ImageFolder (``<folder>/<class>/**/*.jpg``), optionally restricted to ``keep_classes``.

    The restriction happens in :meth:`find_classes`, before any file is scanned, so a 1000-class ImageNet
    folder read as ImageNet-100 only walks 100 class folders; class indices are the sorted kept names, as
    torchvision's ImageFolder would give on a folder holding only those classes.
    """

    def __init__(
        self,
        folder: Path,
        identity: dict[str, Any],
        keep_classes: list[str] | None = None,
        transform: Callable | None = None,
        on_corrupt: str = "error",
    ) -> None:
        self.keep_classes = keep_classes
        # Empty classes are reported below with our own message rather than torchvision's FileNotFoundError.
        DatasetFolder.__init__(
            self, str(folder), loader=load_rgb, extensions=IMG_EXTENSIONS, allow_empty=True
        )
        if not self.samples:
            raise MochiError(
                f"no images found under {folder} (looked for {', '.join(IMG_EXTENSIONS)} in "
                f"{len(self.classes)} class folders). Expected {folder}/<class>/<image>."
            )
        counts = np.bincount(self.targets, minlength=len(self.classes))
        empty = [c for c, k in zip(self.classes, counts, strict=True) if k == 0]
        if empty:
            raise MochiError(
                f"{len(empty)} class folders under {folder} hold no images: {_few(empty)}. Add images "
                f"({', '.join(IMG_EXTENSIONS)}) or remove those folders."
            )
        self._setup(identity, transform, on_corrupt)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        directory = Path(directory)
        if self.keep_classes is not None:
            missing = [c for c in self.keep_classes if not (directory / c).is_dir()]
            if missing:
                raise MochiError(
                    f"{len(missing)} of the {len(self.keep_classes)} subset classes have no folder under "
                    f"{directory}: {_few(missing)}. Point --data at a folder holding all of them "
                    f"({directory}/<class>/...), or use a subset file listing only the classes you have."
                )
            classes = sorted(self.keep_classes)
        else:
            # Hidden folders (.ipynb_checkpoints, .cache) are never classes.
            classes = sorted(
                e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")
            )
            if not classes:
                raise MochiError(
                    f"no class folders in {directory}: the image folder is empty. Expected "
                    f"{directory}/<class>/<image> (or <path>/train/<class>/<image>)."
                )
        return classes, {c: i for i, c in enumerate(classes)}

    def _load(self, index: int) -> Image.Image:
        return self.loader(self.samples[index][0])

    def _where(self, index: int) -> str:
        return self.samples[index][0]


def _image_folder(
    name: str, path: Path, split: str, subset: str | None, *, transform: Callable | None, on_corrupt: str
) -> ImageFolderSource:
    if (path / split).is_dir():
        folder = path / split
    else:
        present = [s for s in _SPLIT_FOLDERS if (path / s).is_dir()]
        if present:
            raise MochiError(
                f"no {split!r} split in {path}: expected {path / split}/<class>/<image>; found split folders "
                f"{', '.join(present)}. Pick one of those splits."
            )
        # No split folders: the classes sit directly under path, and every split reads the same images.
        folder = path
        if split != "train":
            logger.warning(
                "%s has no %s/ folder: split %r reads the class folders directly", path, split, split
            )
    keep = _subset_classes(subset) if subset is not None else None
    identity = {"name": name, "split": split, "root": str(folder), "subset": subset, "source": "imagefolder"}
    return ImageFolderSource(folder, identity, keep_classes=keep, transform=transform, on_corrupt=on_corrupt)


def _subset_classes(subset: str) -> list[str]:
    if subset in SUBSETS:
        list_file = ASSETS / f"{subset}.txt"
    elif Path(subset).expanduser().is_file():
        list_file = Path(subset).expanduser()
    else:
        raise MochiError(
            f"unknown subset {subset!r}: use one of {', '.join(SUBSETS)}, or the path of a text file "
            "with one class folder name per line."
        )
    names = []
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and line not in names:
            names.append(line)
    bad = [n for n in names if "/" in n or "\\" in n or n in (".", "..")]
    if bad or not names:
        raise MochiError(
            f"subset file {list_file} must list class folder names, one per line"
            + (f"; these are paths, not names: {_few(bad)}." if bad else "; it lists none.")
        )
    return names
