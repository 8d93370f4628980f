"""STL-10: the binary files under ``stl10_binary/``, memory-mapped. 96x96 RGB.

torchvision's ``STL10`` reads a whole split into memory (2.7 GB for ``unlabeled``); this source maps the
file and decodes one image at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from mochi.errors import MochiError

from .base import SourceDataset, _check_labels, _check_nonempty, _dataset_folder, _few

STL10_CLASSES = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
]  # fmt: skip
_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE


class STL10Source(SourceDataset):
    """STL-10 binary files, memory-mapped so the 2.7 GB unlabeled file is never read whole.

    ``segments``: ``(X file, number of images)`` in order; ``targets`` covers all of them (-1 = unlabeled).
    """

    def __init__(
        self,
        segments: list[tuple[str, int]],
        targets: np.ndarray,
        classes: list[str],
        identity: dict[str, Any],
        transform: Callable | None = None,
        on_corrupt: str = "error",
    ) -> None:
        self.segments = segments
        self.targets = targets
        self.classes = classes
        self._maps: dict[str, np.memmap] = {}
        self._setup(identity, transform, on_corrupt)

    def _locate(self, index: int) -> tuple[str, int]:
        for path, count in self.segments:
            if index < count:
                return path, index
            index -= count
        raise IndexError(index)

    def _load(self, index: int) -> Image.Image:
        path, j = self._locate(index)
        if path not in self._maps:
            # Opened lazily, per process: a memmap must not be pickled (it would copy the whole file).
            count = dict(self.segments)[path]
            self._maps[path] = np.memmap(path, np.uint8, "r", shape=(count, 3, _STL_SIDE, _STL_SIDE))
        # Each channel is stored column-major, so the raw (3, 96, 96) block is [channel, column, row].
        chw_t = self._maps[path][j]
        return Image.fromarray(np.ascontiguousarray(chw_t.transpose(2, 1, 0)), "RGB")

    def _where(self, index: int) -> str:
        path, j = self._locate(index)
        return f"{path} image {j}"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_maps"] = {}
        return state


def _stl10(split: str, root: str | None, **kwargs: Any) -> STL10Source:
    url = "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
    parts = ["train", "unlabeled"] if split == "train+unlabeled" else [split]
    folder = _dataset_folder("stl10", root, "stl10_binary", f"{parts[0]}_X.bin", url)
    needed = [f"{p}_X.bin" for p in parts] + [f"{p}_y.bin" for p in parts if p != "unlabeled"]
    missing = [str(folder / f) for f in needed if not (folder / f).is_file()]
    if missing:
        raise MochiError(
            f"stl10 {split} files missing: {_few(missing)}. Re-extract {url} under --data-root so that "
            f"stl10_binary/ holds {', '.join(needed)}."
        )
    segments, targets = [], []
    for p in parts:
        x_path = folder / f"{p}_X.bin"
        size = x_path.stat().st_size
        if size % _STL_IMAGE_BYTES:
            raise MochiError(
                f"{x_path} is {size} bytes, not a multiple of one 3x96x96 image ({_STL_IMAGE_BYTES}): it is "
                f"truncated. Re-extract {url}."
            )
        count = size // _STL_IMAGE_BYTES
        if p == "unlabeled":
            labels = np.full(count, -1, dtype=np.int64)
        else:
            y_path = folder / f"{p}_y.bin"
            labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
            if len(labels) != count:
                raise MochiError(
                    f"{y_path} has {len(labels)} labels for {count} images in {x_path}. Re-extract {url}."
                )
            _check_labels(labels, 10, y_path)
        segments.append((str(x_path), count))
        targets.append(labels)
    targets_np = np.concatenate(targets)
    _check_nonempty(len(targets_np), folder)
    classes = list(STL10_CLASSES)
    names_file = folder / "class_names.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if len(names) == 10:
            classes = names
    identity = {
        "name": "stl10",
        "split": split,
        "root": str(folder),
        "subset": None,
        "source": "stl10-binary",
    }
    return STL10Source(segments, targets_np, classes, identity, **kwargs)
