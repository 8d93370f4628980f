"""Detectron2 yaml configs shipped with mochi (package data of ``mochi.detectron_configs``).

``<name>.yaml`` files; ``Base-*`` files are only composed into the others through ``_BASE_``.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def config_names() -> list[str]:
    """Names accepted by ``mochi detect --config`` (the shipped files, without ``.yaml``, bases excluded)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("Base-"))


def config_path(name: str) -> Path:
    """The shipped file for ``name`` (``voc07_R50_C4_24k`` or ``voc07_R50_C4_24k.yaml``)."""
    return CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
