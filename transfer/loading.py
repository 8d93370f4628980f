"""Open a checkpoint file without running code from it.

Checkpoints come from the internet, and a pickle can execute anything while it loads. PyTorch
files are read with ``torch.load(weights_only=True)``; plain pickles (Detectron2 ``.pkl``) with
:mod:`mochi.safe_pickle`. A file that needs arbitrary unpickling is refused unless the caller
passes ``trust_checkpoint=True`` (``--trust-checkpoint``).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mochi.errors import MochiError
from mochi.safe_pickle import UnsafePickleError, _RestrictedUnpickler, safe_load

# The first object of a legacy (pre-1.6, non-zip) torch.save file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

TRUST_HINT = (
    "it needs arbitrary unpickling, which can run code hidden in the file; if you trust its source, "
    "pass --trust-checkpoint (trust_checkpoint=True) to load it anyway"
)


def _corrupt(path: Path, err: BaseException) -> MochiError:
    detail = str(err).splitlines()[0][:120] if str(err) else "no data"
    return MochiError(
        f"{path} is truncated or corrupt ({type(err).__name__}: {detail}); download or copy it again"
    )


def _is_legacy_torch(path: Path) -> bool:
    # Only the first pickled object is read, with the restricted unpickler: safe and cheap.
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh).load() == _TORCH_LEGACY_MAGIC
    except Exception:
        return False


def read_checkpoint(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> tuple[Any, str]:
    """Load a checkpoint file; returns ``(object, container)`` with container ``"torch"`` or ``"pickle"``.

    Sniffs the bytes, not the extension: a zip archive (or a legacy torch file) goes through
    ``torch.load(weights_only=True)``; any other pickle (Detectron2 ``.pkl``) through the
    restricted unpickler that allows only numpy arrays and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise MochiError(f"{path}: no such checkpoint file; check the path")
    if path.stat().st_size == 0:
        raise MochiError(f"{path} is empty (truncated or corrupt); download or copy it again")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if zipfile.is_zipfile(path) or magic[:2] == b"PK" or _is_legacy_torch(path):
        return _torch_load(path, trust_checkpoint), "torch"
    if magic[:1] != b"\x80":
        raise MochiError(
            f"{path} is neither a PyTorch checkpoint nor a pickle (truncated or corrupt, or another format); "
            "pass a .pth/.pth.tar/.ckpt/.pkl checkpoint"
        )
    return _pickle_load(path, trust_checkpoint), "pickle"


def _torch_load(path: Path, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if not trust and "weights only" in str(err).lower():
            raise MochiError(f"refusing to load {path}: {TRUST_HINT}") from None
        raise _corrupt(path, err) from None
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
