"""Open a checkpoint file without running code from it.

Checkpoints come from the internet, and a pickle can execute anything while it loads. PyTorch
files are read with ``torch.load(weights_only=True)``, which also accepts an ``argparse.Namespace``
(DINO, timm ``train.py`` and torchvision's reference scripts save their ``args``: plain values, rebuilt
by the same restricted unpickler); plain pickles (Detectron2 ``.pkl``) with :mod:`mochi.safe_pickle`;
``.safetensors`` files (timm / Hugging Face hub weights) with the ``safetensors`` package, which holds
only tensors. Training checkpoints of OpenMMLab frameworks (MMPreTrain, MMSelfSup: ``message_hub``
and its ``HistoryBuffer``) are read without importing the framework: their classes become inert
placeholders that hold nothing, so only tensors and plain containers come back. Any other file that
needs arbitrary unpickling is refused, naming the globals that block it, unless the caller passes
``trust_checkpoint=True`` (``--trust-checkpoint``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mochi.errors import MochiError
from mochi.safe_pickle import UnsafePickleError, _RestrictedUnpickler, is_allowed, safe_load

# The first object of a legacy (pre-1.6, non-zip) torch.save file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Globals weights_only may rebuild besides torch's own: their contents are unpickled just as restrictedly.
_SAFE_GLOBALS = [argparse.Namespace]
# Frameworks whose training checkpoints keep weights in plain dicts next to bookkeeping objects.
_INERT_ROOTS = ("mmengine", "mmcv", "mmpretrain", "mmselfsup", "mmcls", "mmdet", "mmseg")

TRUST_HINT = (
    "it needs arbitrary unpickling, which can run code hidden in the file; if you trust its source, "
    "pass --trust-checkpoint (trust_checkpoint=True) to load it anyway"
)


class Inert:
    """Stands in for a class the loader will not import: accepts any arguments and state, keeps none."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (not loaded)>"


def _corrupt(path: Path, err: BaseException) -> MochiError:
    detail = str(err).splitlines()[0][:120] if str(err) else "no data"
    return MochiError(
        f"{path} is a damaged file: truncated or corrupt ({type(err).__name__}: {detail}); "
        "download or copy it again"
    )


def _unsupported(path: Path, what: str) -> MochiError:
    return MochiError(
        f"{path}: unsupported format ({what}); mochi reads PyTorch checkpoints (.pth/.pth.tar/.ckpt), "
        "pickles (.pkl) and .safetensors files: convert it to one of those"
    )


def _is_legacy_torch(path: Path) -> bool:
    # Only the first pickled object is read, with the restricted unpickler: safe and cheap.
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh).load() == _TORCH_LEGACY_MAGIC
    except Exception:
        return False


def _safetensors_header(head: bytes) -> int | None:
    # 8-byte little-endian header length, then a JSON header that starts with '{'.
    if len(head) < 9 or head[8:9] != b"{":
        return None
    return int.from_bytes(head[:8], "little")


def read_checkpoint(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> tuple[Any, str]:
    """Load a checkpoint file; returns ``(object, container)``, container ``"torch"``, ``"pickle"`` or
    ``"safetensors"``.

    Sniffs the bytes, not the extension: a zip archive (or a legacy torch file) goes through
    ``torch.load(weights_only=True)``; a safetensors header through ``safetensors``; any other pickle
    (Detectron2 ``.pkl``) through the restricted unpickler. A file in none of these formats is reported
    as an unsupported format, a file that is one of them but does not read as damaged. A whole pickled
    model (``torch.save(model)``, only with ``trust_checkpoint``) gives its ``state_dict()``.
    """
    path = Path(path)
    if not path.is_file():
        raise MochiError(f"{path}: no such checkpoint file; check the path")
    size = path.stat().st_size
    if size == 0:
        raise MochiError(f"{path} is empty (truncated or corrupt); download or copy it again")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if (header := _safetensors_header(head)) is not None:
        return _safetensors_load(path, header, size), "safetensors"
    if head.startswith(_HDF5_MAGIC):
        raise _unsupported(path, "an HDF5 file, e.g. Keras / TensorFlow weights")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                raise _unsupported(path, "a zip archive that is not a PyTorch checkpoint, e.g. a NumPy .npz")
    if zipfile.is_zipfile(path) or head[:2] == b"PK" or _is_legacy_torch(path):
        obj, kind = _torch_load(path, trust_checkpoint), "torch"
    elif head[:1] == b"\x80":
        obj, kind = _pickle_load(path, trust_checkpoint), "pickle"
    else:
        raise _unsupported(
            path, f"not a PyTorch checkpoint, pickle or safetensors file; starts with {head[:8]!r}"
        )
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    return obj, kind


def _safetensors_load(path: Path, header: int, size: int) -> dict[str, torch.Tensor]:
    if 8 + header > size:
        raise MochiError(
            f"{path} is a damaged safetensors file: its header claims {header} bytes but the file has "
            f"{size - 8} after the length; download or copy it again"
        )
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - safetensors is a dependency
        raise MochiError(f"{path} is a safetensors file: pip install safetensors to read it") from None
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, err) from None


def _blocked_globals(path: Path, err: BaseException) -> list[str]:
    """The globals ``weights_only`` refuses in ``path`` (all of them where torch can list them)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _SAFE_GLOBALS}
    # The one torch stopped at first (the outermost object, e.g. a whole model's class), then the rest.
    found = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", str(err))
    try:
        found += sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy files: only the first refusal is known
        pass
    return [g for g in dict.fromkeys(found) if g not in allowed]


def _can_be_inert(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return name.split(".")[0] in _INERT_ROOTS or is_allowed(module, attr)


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    if is_allowed(module, attr):  # numpy's own rebuilders: plain data
        return getattr(importlib.import_module(module), attr)
    return (type(attr, (Inert,), {"__module__": module}), name)


def _inert_load(path: Path, blocked: list[str]) -> Any:
    allowed = [*_SAFE_GLOBALS, *(_resolve(g) for g in blocked)]
    if "numpy.dtype" in blocked:  # a dtype is rebuilt as an instance of its numpy.dtypes.<Name>DType class
        import numpy as np

        allowed += [
            c for c in vars(np.dtypes).values() if isinstance(c, type) and c.__name__.endswith("DType")
        ]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise _refusal(path, blocked) from None


def _preview(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _refusal(path: Path, blocked: list[str]) -> MochiError:
    what = (
        f"it references {_preview(blocked)}, which are not plain data" if blocked else "it is not plain data"
    )
    if any(g.startswith(("torch.nn.modules.", "torchvision.models.")) for g in blocked):
        what += " (a whole pickled model, torch.save(model); its state_dict() is what mochi needs)"
    return MochiError(f"refusing to load {path}: {what}; {TRUST_HINT}")


def _torch_load(path: Path, trust: bool) -> Any:
    try:
        if trust:
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except ModuleNotFoundError as err:
                # The framework that wrote it is not installed: read the weights without it if we can.
                blocked = _blocked_globals(path, err)
                if blocked and all(_can_be_inert(g) for g in blocked):
                    return _inert_load(path, blocked)
                raise MochiError(
                    f"{path} needs the Python package {err.name!r} to unpickle (--trust-checkpoint runs its "
                    f"code), and it is not installed; install it, or save the model's state_dict() instead"
                ) from None
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if trust or "weights only" not in str(err).lower():
            raise _corrupt(path, err) from None
        blocked = _blocked_globals(path, err)
        if blocked and all(_can_be_inert(g) for g in blocked):
            return _inert_load(path, blocked)
        raise _refusal(path, blocked) from None
    except (EOFError, RuntimeError, ValueError, zipfile.BadZipFile, KeyError) as err:
        raise _corrupt(path, err) from None


def _pickle_load(path: Path, trust: bool) -> Any:
    try:
        if trust:
            with open(path, "rb") as fh:
                return pickle.load(fh, encoding="latin1")
        return safe_load(path, encoding="latin1")
    except UnsafePickleError as err:
        raise MochiError(f"refusing to load {path}: {err}; {TRUST_HINT}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as err:
        raise _corrupt(path, err) from None
