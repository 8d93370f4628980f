"""Unpickling that cannot run code: only plain containers and numpy arrays.

Pickles are everywhere in this field (Detectron2 ``.pkl`` weights, CIFAR's python batches) and
come from the internet. ``pickle.load`` on such a file can execute arbitrary code; this loader
refuses every global except a short allow-list needed to rebuild numpy arrays, so a crafted
file raises :class:`UnsafePickleError` instead of running anything.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

# (module, name) pairs a benign pickle of dicts/lists/numpy arrays may reference.
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list (it could run code)."""


def is_allowed(module: str, name: str) -> bool:
    """Whether the global ``module.name`` is on the allow-list (it only rebuilds numpy data)."""
    if (module, name) in _ALLOWED:
        return True
    # numpy >= 1.25 pickles dtypes through numpy.dtypes.<Name>DType classes.
    return name.endswith("DType") and module in ("numpy.dtypes", "numpy._core._dtype", "numpy.core._dtype")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if is_allowed(module, name):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to unpickle global {module}.{name}: only numpy arrays and plain containers are allowed"
        )


def safe_load(path: str | os.PathLike, *, encoding: str = "ASCII") -> Any:
    """Unpickle the file at ``path`` allowing only numpy arrays and plain containers.

    ``encoding='latin1'`` reads Python-2 pickles that hold numpy arrays (e.g. CIFAR batches).
    """
    with open(path, "rb") as fh:
        return _RestrictedUnpickler(fh, encoding=encoding).load()
