"""Whether Detectron2 can be imported, and how to install it when it cannot."""

from __future__ import annotations

from mochi.errors import MochiError

INSTALL_HINT = (
    "Detectron2 is not installed; `mochi detect` needs it. Install it into this environment with the "
    "project's step: PYTHON=$(which python) bash scripts/install_detectron2.sh  (it keeps an existing "
    "Detectron2, builds the official one where GitHub is reachable, else installs the offline route); "
    "or follow https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
)


def require_detectron2() -> None:
    """Raise :class:`MochiError` with the install command when Detectron2 cannot be imported."""
    try:
        import detectron2  # noqa: F401
    except ImportError as err:
        raise MochiError(f"{INSTALL_HINT} (import error: {err})") from None
