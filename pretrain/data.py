"""Dataset sources: a name (or folder) and a split -> a map-style dataset of ``(transform(img), target)``.

Built-in names (see :data:`DATASET_NAMES`):

- ``fashion-mnist``: the full 60k/10k set from Debian's ``dataset-fashion-mnist`` (or ``root``) when its four
  idx ``.gz`` files are there, else the embedded class-balanced 10k/2k subset; ``fashion-mnist-embedded``
  always uses the subset. 28x28, grey replicated to RGB.
- ``cifar10`` / ``cifar100``: the python batches under ``root`` (``cifar-10-batches-py/``,
  ``cifar-100-python/``), read with the restricted unpickler. 32x32 RGB.
- ``stl10``: the binary files under ``root`` (``stl10_binary/``), memory-mapped. 96x96 RGB.

Any other name is the path of an image folder: ``<path>/<split>/<class>/*.jpg`` (ImageNet layout) or
``<path>/<class>/*.jpg``; ``subset="imagenet100"`` keeps the 100 ImageNet-100 synsets.

Every dataset returns PIL RGB images (before ``transform``) and integer targets (-1 = unlabeled), carries
``classes``, ``targets`` and ``identity()`` (a JSON-able description for checkpoints and result records),
and pickles cheaply for DataLoader workers.
"""

from __future__ import annotations

import gzip
import logging
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, DatasetFolder

from mochi.errors import MochiError
from mochi.safe_pickle import safe_load

logger = logging.getLogger("mochi.data")

DATASET_NAMES: tuple[str, ...] = ("fashion-mnist", "fashion-mnist-embedded", "cifar10", "cifar100", "stl10")
SUBSETS: tuple[str, ...] = ("imagenet100",)
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
# Split folder names that mark the ImageNet layout (<path>/<split>/<class>/...).
_SPLIT_FOLDERS = ("train", "val", "test")

ASSETS = Path(__file__).parent / "assets"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
STL10_CLASSES = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
]  # fmt: skip
_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE

# A run of this many unreadable images in a row means the folder is broken, not a few bad files.
MAX_CONSECUTIVE_CORRUPT = 50
# Stands in for the shared skip counter in a pickle that is not starting a process (see __getstate__).
_FRESH_COUNTER = "fresh-counter"


def describe_sources() -> str:
    """Short help text listing the accepted ``--data`` values (for the CLI)."""
    return (
        "Accepted --data values:\n"
        "  fashion-mnist           full Fashion-MNIST (Debian dataset-fashion-mnist, or --data-root\n"
        "                          with its 4 idx .gz files) if present, else the embedded subset;\n"
        "                          splits train, test\n"
        "  fashion-mnist-embedded  always the embedded class-balanced subset (10k train / 2k test)\n"
        "  cifar10, cifar100       python batches under --data-root (cifar-10-batches-py/,\n"
        "                          cifar-100-python/); splits train, test\n"
        "  stl10                   binary files under --data-root (stl10_binary/); splits train, test,\n"
        "                          unlabeled, train+unlabeled\n"
        "  PATH                    an image folder: PATH/<split>/<class>/*.jpg (ImageNet layout) or\n"
        "                          PATH/<class>/*.jpg; subset imagenet100 (or a text file of class\n"
        "                          names) keeps only those classes"
    )


# ---------------------------------------------------------------------------------------------------------
# The dataset classes


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


def _new_counter() -> Any:
    # Created in the parent process, before any DataLoader worker starts, so that forked workers inherit it
    # and spawned ones receive it. A lock made in the "spawn" context works for both; one made in the
    # default "fork" context on Linux refuses to travel to a spawned worker.
    return multiprocessing.get_context("spawn").Value("q", 0)


def load_rgb(path: str) -> Image.Image:
    """Open and fully decode an image file as RGB (a truncated file fails here, not later in a transform)."""
    with open(path, "rb") as fh:
        img = Image.open(fh)
        return img.convert("RGB")


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


# ---------------------------------------------------------------------------------------------------------
# The entry point


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
            return _fashion_mnist(key, split, root, **kwargs)
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


# ---------------------------------------------------------------------------------------------------------
# Adapters


def _fashion_mnist(key: str, split: str, root: str | None, **kwargs: Any) -> ArraySource:
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


# ---------------------------------------------------------------------------------------------------------
# Small helpers


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
