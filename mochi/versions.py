"""The library versions that can change a number, for checkpoints and result records.

Versions come from the installed distributions' metadata, so collecting them imports nothing: writing a
record never loads FAISS or Detectron2 (or changes the environment they read at import time).
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from mochi import __version__

# Import name -> the distributions that provide it (first one installed wins).
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "numpy": ("numpy",),
    "sklearn": ("scikit-learn",),
    "faiss": ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-cpu", "faiss"),
    "detectron2": ("detectron2", "pb1-detectron2"),
}


def _installed(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str]:
    """``{"mochi", "python", "torch", "torchvision", "numpy", "sklearn", "faiss", "detectron2", "cuda"}``;
    libraries that are not installed are left out, and ``cuda`` only once torch is loaded."""
    out = {"mochi": __version__, "python": platform.python_version()}
    for module, distributions in _DISTRIBUTIONS.items():
        version = _installed(distributions)
        if version is not None:
            out[module] = version
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cuda"] = str(torch.version.cuda)
    return out
