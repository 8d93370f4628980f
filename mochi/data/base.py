"""The dataset base every source shares: PIL RGB items, targets, identity, corrupt-image handling.

Every source returns ``(transform(img), target)`` with ``img`` a fully decoded PIL RGB image and ``target`` an
int (-1 = unlabeled), carries ``classes``, ``targets`` and ``identity()`` (a JSON-able description for
checkpoints and result records), and pickles cheaply for DataLoader workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mochi.errors import MochiError

logger = logging.getLogger("mochi.data")

# A run of this many unreadable images in a row means the folder is broken, not a few bad files.
MAX_CONSECUTIVE_CORRUPT = 50
# Stands in for the shared skip counter in a pickle that is not starting a process (see __getstate__).
_FRESH_COUNTER = "fresh-counter"


class SourceDataset(Dataset):
    """Base of every source: items ``(transform(img), target)`` with ``img`` a PIL RGB image.

    Subclasses set ``classes`` and ``targets`` and implement ``_load(i) -> PIL.Image`` (RGB, fully decoded)
    and ``_where(i) -> str`` (the file or array slot, for messages), then call :meth:`_setup`.
    """

    classes: list[str]
    targets: Sequence[int] | np.ndarray

    def _setup(self, identity: dict[str, Any], transform: Callable | None, on_corrupt: str) -> None:
        self.transform = transform
        self.on_corrupt = on_corrupt
        self._identity = identity
        self._corrupt = _new_counter() if on_corrupt == "skip" else None

    def _load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def _where(self, index: int) -> str:
        return f"{self._identity['name']}[{index}]"

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index, n = int(index), len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:  # the skip wrap-around below must not turn iteration into an endless loop
            raise IndexError(f"index {index} out of range for {n} images")
        img, target = self._read(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def _read(self, index: int) -> tuple[Image.Image, int]:
        n = len(self)
        for attempt in range(min(MAX_CONSECUTIVE_CORRUPT, n)):
            i = (index + attempt) % n
            try:
                return self._load(i), int(self.targets[i])
            # PIL reports bad files through many types (OSError, SyntaxError, zlib.error, ValueError,
            # DecompressionBombError...); _load only decodes, so anything it raises means "unreadable".
            except Exception as err:
                where = self._where(i)
                if self.on_corrupt != "skip":
                    raise MochiError(
                        f"cannot read image {where}: {err}. Remove or replace that file, or pass "
                        "--skip-corrupt to substitute the next readable image."
                    ) from err
                logger.warning("skipping unreadable image %s (%s); using the next index instead", where, err)
                with self._corrupt.get_lock():
                    self._corrupt.value += 1
        raise MochiError(
            f"{min(MAX_CONSECUTIVE_CORRUPT, n)} consecutive unreadable images starting at "
            f"{self._where(index)}: the dataset looks broken, not just a few bad files. Check the folder "
            "(or re-extract it)."
        )

    def corrupt_count(self) -> int:
        """Unreadable images skipped so far, summed over all DataLoader workers (always 0 in error mode)."""
        return 0 if self._corrupt is None else int(self._corrupt.value)

    def identity(self) -> dict[str, Any]:
        """What this dataset is, as JSON-able values: for checkpoints and result records."""
        return {**self._identity, "num_images": len(self), "num_classes": len(self.classes)}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # A shared counter may only travel to a process being started (DataLoader workers under spawn or
        # forkserver); any other pickle (a copy, a cache) gets a fresh counter instead of an error.
        if state.get("_corrupt") is not None and multiprocessing.context.get_spawning_popen() is None:
            state["_corrupt"] = _FRESH_COUNTER
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("_corrupt"), str) and state["_corrupt"] == _FRESH_COUNTER:
            state["_corrupt"] = _new_counter()
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity()})"


class ArraySource(SourceDataset):
    """Images held in memory: ``images`` (N, H, W) grey or (N, H, W, 3) RGB, uint8."""

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        classes: list[str],
        identity: dict[str, Any],
        transform: Callable | None = None,
        on_corrupt: str = "error",
    ) -> None:
        self.images = images
        self.targets = targets
        self.classes = classes
        self._setup(identity, transform, on_corrupt)

    def _load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")


def _new_counter() -> Any:
    # Created in the parent process, before any DataLoader worker starts, so that forked workers inherit it
    # and spawned ones receive it. A lock made in the "spawn" context works for both; one made in the
    # default "fork" context on Linux refuses to travel to a spawned worker.
    return multiprocessing.get_context("spawn").Value("q", 0)


def _check_nonempty(count: int, where: Path) -> None:
    if count == 0:
        raise MochiError(
            f"{where} holds 0 images: the dataset is empty. Re-extract or point at the full copy."
        )


def _check_labels(labels: np.ndarray, n_classes: int, where: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise MochiError(
            f"{where} has labels outside 0..{n_classes - 1} (min {labels.min()}, max {labels.max()}). "
            "Replace it with the original file."
        )


def _few(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:k])
    return shown + (f" (and {len(items) - k} more)" if len(items) > k else "")


class LimitedDataset(Dataset):
    """A fixed random subset of ``limit`` images of ``dataset`` (seeded), for quick runs on a laptop.

    Random rather than the first N: an image folder lists its images class by class, so its first N
    images would cover only the first few classes.
    """

    def __init__(self, dataset: SourceDataset, limit: int, seed: int = 0) -> None:
        if limit <= 0:
            raise MochiError(
                f"an image limit (--limit, --limit-train, --limit-test) must be >= 1, got {limit}"
            )
        self.dataset = dataset
        n = len(dataset)
        self.indices = np.sort(np.random.default_rng(seed).permutation(n)[: min(limit, n)])
        self.classes = dataset.classes
        self.targets = np.asarray(dataset.targets)[self.indices]
        self.limit = limit
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < len(self.indices):
            raise IndexError(f"index {index} out of range for {len(self.indices)} images")
        return self.dataset[int(self.indices[index])]

    def corrupt_count(self) -> int:
        return self.dataset.corrupt_count()

    def identity(self) -> dict[str, Any]:
        return {
            **self.dataset.identity(),
            "num_images": len(self),
            "limit": self.limit,
            "limit_seed": self.seed,
            "of": len(self.dataset),
        }


def _dataset_folder(key: str, root: str | None, folder_name: str, marker: str, url: str) -> Path:
    """``root`` may be the parent of ``folder_name`` or that folder itself (recognised by ``marker``)."""
    if root is None:
        raise MochiError(
            f"{key} needs --data-root: the folder holding {folder_name}/ (extracted from {url}); it is not "
            "downloaded automatically."
        )
    base = Path(root).expanduser().resolve()
    if (base / marker).is_file() or base.name == folder_name:
        return base
    if (base / folder_name).is_dir():
        return base / folder_name
    raise MochiError(
        f"{key}: no {base / folder_name} (nor {marker} in {base}). Extract {url} so that "
        f"{base / folder_name}/{marker} exists, or point --data-root at the folder that holds {folder_name}/."
    )
