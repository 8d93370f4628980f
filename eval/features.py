"""One feature pass shared by every frozen protocol: extraction and an on-disk cache.

Features are the pooled backbone output (``fc`` removed): ``(N, D)`` rows, D = 512 for ResNet-18/34 and
2048 for ResNet-50+. Extraction streams each batch into a ``.npy`` memory map, so a dataset never has to
fit in RAM; under ``torchrun`` every rank fills its own rows of the same file.

The cache is keyed by everything that changes a feature: the checkpoint's content hash (or random-init
seed), encoder, arch and stem, the dataset identity and split, the transform and the storage dtype. A
cache entry is a folder ``<root>/<key>/`` holding ``features.npy``, ``labels.npy`` and ``meta.json``
(written last, with the SHA-256 of both arrays); an entry is built in a folder of its own and renamed into
place whole under a per-key lock, so concurrent runs never share files. An entry whose meta, shapes or
checksums do not match is reported and rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mochi import distributed as dist_utils
from mochi.errors import MochiError
from mochi.io import atomic_write_json, sha256_file, write_problem

from .backbones import EvalBackbone
from .config import FEATURE_DTYPES

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
DTYPES = FEATURE_DTYPES


def default_cache_dir() -> Path:
    """``$MOCHI_CACHE/features``, else ``~/.cache/mochi/features``."""
    return Path(os.environ.get("MOCHI_CACHE", "~/.cache/mochi")).expanduser() / "features"


@dataclass
class Features:
    """``features: (N, D)`` float16/float32 (possibly a read-only memory map), ``labels: (N,)`` int64."""

    features: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.features)).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# Extraction


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    ws, rank = dist_utils.world_size(), dist_utils.rank()
    part = Subset(dataset, range(rank, len(dataset), ws)) if ws > 1 else dataset
    return DataLoader(
        part,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # Its own generator: iterating a DataLoader draws a worker base seed, which would otherwise come
        # from (and advance) the caller's global torch generator.
        generator=torch.Generator().manual_seed(0),
    )


@torch.inference_mode()
def extract_features(
    trunk: torch.nn.Module,
    dataset: Dataset,
    features_out: np.ndarray,
    labels_out: np.ndarray,
    *,
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = True,
    progress: bool = False,
) -> None:
    """Run ``trunk`` (images -> pooled features) over ``dataset`` and write row ``i`` of ``features_out``
    / ``labels_out`` for item ``i``. Under torchrun each rank writes items ``rank::world_size``.

    ``features_out``: ``(N, D)`` array or memory map; ``labels_out``: ``(N,)``. AMP (bf16, else fp16)
    applies on GPU only; features are stored in ``features_out.dtype``.
    """
    device = torch.device(device)
    trunk = trunk.to(device).eval()
    if device.type == "cuda":
        trunk = trunk.to(memory_format=torch.channels_last)
    use_amp = amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    ws, rank = dist_utils.world_size(), dist_utils.rank()
    from tqdm import tqdm

    pos = rank
    batches = tqdm(
        _loader(dataset, batch_size, workers, device),
        desc="features",
        unit="batch",
        disable=not progress or not dist_utils.is_main(),
        leave=False,
    )
    for images, targets in batches:
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.to(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            out = trunk(images)
        rows = np.arange(pos, pos + ws * len(images), ws)
        features_out[rows] = out.float().cpu().numpy().astype(features_out.dtype, copy=False)
        labels_out[rows] = targets.numpy()
        pos += ws * len(images)


# ---------------------------------------------------------------------------------------------------------
# Cache


def cache_key(spec: dict[str, Any]) -> str:
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class FeatureCache:
    """Feature arrays on disk under ``root``, one folder per key (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None, *, verify: bool = False) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.verify = verify  # full checksum on every hit, not only when size or modification time differ

    def folder(self, spec: dict[str, Any]) -> Path:
        return self.root / cache_key(spec)

    def lock(self, spec: dict[str, Any]) -> contextlib.AbstractContextManager:
        """An exclusive lock on one key, across processes (publishing or removing an entry holds it)."""
        return _file_lock(self.root / f"{cache_key(spec)}.lock")

    def load(self, spec: dict[str, Any]) -> Features | None:
        """The cached features for ``spec``, or None on a miss; a damaged or stale entry is removed.

        Every hit is verified (shapes, settings, checksums) before use; entries only ever appear whole (an
        atomic rename of a finished folder), so a concurrent writer can never hand out half-written rows.
        """
        folder = self.folder(spec)
        if not (folder / "meta.json").is_file():
            return None
        problem = self._check(folder, spec)
        if problem is not None:
            logger.warning("feature cache %s is unusable (%s): rebuilding it", folder, problem)
            if dist_utils.is_main():
                with self.lock(spec):
                    # Another process may have replaced it with a good entry meanwhile: check again.
                    if self._check(folder, spec) is not None:
                        _remove_entry(folder)
            dist_utils.barrier()
            if self._check(folder, spec) is not None:
                return None
        return self._open(folder, from_cache=True)

    @staticmethod
    def _open(folder: Path, from_cache: bool) -> Features:
        meta = json.loads((folder / "meta.json").read_text())
        feats = np.load(folder / "features.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
        return Features(feats, labels, meta=meta, from_cache=from_cache, path=folder)

    def _check(self, folder: Path, spec: dict[str, Any]) -> str | None:
        """Why the entry at ``folder`` cannot be used for ``spec`` (None: it can).

        Each array's size and modification time must be those recorded when it was written; the full
        SHA-256 is computed when they differ (or the entry predates them) and on every hit with ``verify``.
        Reading the whole cache again on each hit would cost seconds per evaluation at ImageNet scale.
        """
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            return f"unreadable meta.json: {err}"
        if meta.get("version") != CACHE_VERSION or meta.get("spec") != json.loads(json.dumps(spec)):
            return "written for different settings (stale)"
        for name in ("features", "labels"):
            path = folder / f"{name}.npy"
            if not path.is_file():
                return f"{path.name} is missing"
            if not self.verify and _file_stat(path) == meta.get("stat", {}).get(name):
                continue
            if sha256_file(path) != meta.get("sha256", {}).get(name):
                return f"{path.name} does not match its checksum (damaged)"
        return None

    def build(self, spec: dict[str, Any], n: int, dim: int, dtype: str, fill) -> Features:
        """Create the entry: ``fill(features_out, labels_out)`` writes into memory maps; all ranks call it.

        The rows are written into a folder of this run's own (``<key>.partial-<pid>-<random>``), checksummed,
        then renamed into place under the key's lock. If another process published a valid entry first,
        ours is discarded and theirs used: concurrent runs never write into the same files.
        """
        folder = self.folder(spec)
        tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp = Path(dist_utils.broadcast_object(str(tmp)))  # rank 0's name: all ranks fill one folder
        try:
            if dist_utils.is_main():
                tmp.mkdir(parents=True)
                np.lib.format.open_memmap(
                    tmp / "features.npy", mode="w+", dtype=dtype, shape=(n, dim)
                ).flush()
                np.lib.format.open_memmap(tmp / "labels.npy", mode="w+", dtype=np.int64, shape=(n,)).flush()
            dist_utils.barrier()
            feats = np.lib.format.open_memmap(tmp / "features.npy", mode="r+")
            labels = np.lib.format.open_memmap(tmp / "labels.npy", mode="r+")
            fill(feats, labels)
            feats.flush()
            labels.flush()
            del feats, labels
            dist_utils.barrier()
            if dist_utils.is_main():
                sums = {name: sha256_file(tmp / f"{name}.npy") for name in ("features", "labels")}
                stats = {name: _file_stat(tmp / f"{name}.npy") for name in ("features", "labels")}
                meta = {"version": CACHE_VERSION, "spec": spec, "shape": [n, dim], "dtype": dtype}
                atomic_write_json(tmp / "meta.json", {**meta, "sha256": sums, "stat": stats})
                self._publish(tmp, folder, spec)
        except BaseException as err:
            if dist_utils.is_main():
                shutil.rmtree(tmp, ignore_errors=True)
            problem = write_problem(folder, err)
            if problem is not None:
                raise MochiError(f"feature cache: {problem} (or pass --cache-dir / --no-cache)") from err
            raise
        dist_utils.barrier()
        return self._open(folder, from_cache=False)

    def _publish(self, tmp: Path, folder: Path, spec: dict[str, Any]) -> None:
        with self.lock(spec):
            if folder.exists():
                if self._check(folder, spec) is None:
                    logger.info("feature cache %s was built by another process meanwhile: using it", folder)
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                _remove_entry(folder)
            os.replace(tmp, folder)


def _file_stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remove_entry(folder: Path) -> None:
    # Renamed aside first (atomic), so no reader ever sees a half-deleted entry.
    trash = folder.with_name(f"{folder.name}.trash-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """``flock`` on ``path`` (created if needed); a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames still keep entries whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def get_features(
    backbone: EvalBackbone,
    dataset: Dataset,
    *,
    transform_spec: dict[str, Any],
    cache: FeatureCache | None = None,
    dtype: str = "float32",
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = True,
    progress: bool = False,
) -> Features:
    """Features of ``dataset`` (already carrying the transform described by ``transform_spec``).

    With a ``cache``, a valid entry is returned without touching the backbone; otherwise features are
    extracted (into the cache when given, else into memory).
    """
    if dtype not in DTYPES:
        raise MochiError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    identity = dataset.identity() if hasattr(dataset, "identity") else {"name": type(dataset).__name__}
    spec = {"backbone": backbone.identity, "dataset": identity, "transform": transform_spec, "dtype": dtype}
    n, dim = len(dataset), backbone.feature_dim
    if n == 0:
        raise MochiError(f"dataset {identity.get('name')} split {identity.get('split')} holds no images")
    if dim == 0:  # raw pixels: the width is the transformed image's size
        dim = int(dataset[0][0].numel())

    def fill(feats: np.ndarray, labels: np.ndarray) -> None:
        extract_features(
            backbone.trunk(),
            dataset,
            feats,
            labels,
            batch_size=batch_size,
            workers=workers,
            device=device,
            amp=amp,
            progress=progress,
        )

    if cache is None:
        feats, labels = np.empty((n, dim), dtype=dtype), np.empty(n, dtype=np.int64)
        if dist_utils.world_size() > 1:
            raise MochiError("sharded extraction under torchrun needs a feature cache: drop --no-cache")
        fill(feats, labels)
        return Features(feats, labels, meta={"spec": spec})
    hit = cache.load(spec)
    if hit is not None:
        logger.info("feature cache hit: %s", hit.path)
        return hit
    return cache.build(spec, n, dim, dtype, fill)
