"""The import graph, read from the source files: data flows core -> pretrain -> transfer -> eval -> cli.

Every ``import`` statement counts, including the lazy ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it is installed as (pyproject's package-dir).
STAGES = {"pretrain": "mochi.pretrain", "transfer": "mochi.transfer", "eval": "mochi.eval"}
# What each part may import from this project (besides itself and the core).
ALLOWED = {
    "core": set(),
    "mochi.detectron_configs": set(),
    "mochi.pretrain": set(),
    "mochi.transfer": {"mochi.detectron_configs"},  # yaml files only
    "mochi.eval": {"mochi.transfer", "mochi.detectron_configs"},
    "mochi.cli": {"mochi.pretrain", "mochi.transfer", "mochi.eval", "mochi.detectron_configs"},
}
PARTS = ("mochi.pretrain", "mochi.transfer", "mochi.eval", "mochi.cli", "mochi.detectron_configs")


def _part(module: str) -> str | None:
    """Which part a dotted ``mochi.*`` module belongs to (``core`` for the shared core)."""
    if module != "mochi" and not module.startswith("mochi."):
        return None
    for part in PARTS:
        if module == part or module.startswith(part + "."):
            return part
    return "core"


def _source_files() -> dict[Path, str]:
    files = {}
    for folder, package in STAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            files[path] = package
    for path in (ROOT / "mochi").rglob("*.py"):
        rel = path.relative_to(ROOT / "mochi").parts
        # mochi/__main__.py (`python -m mochi`) is the command line's entry point, not part of the core.
        files[path] = "mochi.cli" if rel[0] in ("cli", "__main__.py") else "core"
    return files


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    base = package if package != "core" else "mochi"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                rel = path.relative_to(ROOT).parts
                pkg = [*base.split("."), *rel[1:-1]] if package != "core" else ["mochi", *rel[1:-1]]
                if node.level > 1:
                    pkg = pkg[: -(node.level - 1)]
                module = ".".join(pkg + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names if module == "mochi"]
    return found


def _violations() -> list[str]:
    bad = []
    for path, part in _source_files().items():
        for line, module in _imports(path, part):
            target = _part(module)
            if target is None or target == part or target == "core":
                continue
            if target not in ALLOWED[part]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({part}) imports {module}")
    return bad


def test_no_import_against_the_data_flow():
    assert _violations() == []


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    # A core module importing a stage, and eval importing pretrain, must both be caught.
    fake_root = tmp_path / "repo"
    (fake_root / "mochi").mkdir(parents=True)
    (fake_root / "eval").mkdir()
    (fake_root / "pretrain").mkdir()
    (fake_root / "transfer").mkdir()
    (fake_root / "mochi" / "core_mod.py").write_text("def f():\n    from mochi.eval import knn\n")
    (fake_root / "eval" / "x.py").write_text("from mochi.pretrain.moco import MoCo\nfrom . import y\n")
    (fake_root / "transfer" / "t.py").write_text("from ..pretrain import moco\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", fake_root)
    found = _violations()
    assert any("core_mod.py:2 (core) imports mochi.eval" in v for v in found), found
    assert any("x.py:1 (mochi.eval) imports mochi.pretrain.moco" in v for v in found), found
    assert any("t.py:1 (mochi.transfer) imports mochi.pretrain" in v for v in found), found
    assert not any("x.py:2" in v for v in found)


@pytest.mark.parametrize("folder", ["pretrain", "transfer", "eval", "mochi"])
def test_modules_stay_small_or_say_why(folder):
    # ~400 lines at most, unless the module's docstring says why it is longer.
    for path in (ROOT / folder).rglob("*.py"):
        lines = path.read_text().count("\n")
        if lines > 420:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "Longer than" in doc, f"{path.relative_to(ROOT)} has {lines} lines and no reason given"


def test_the_readme_layout_names_every_module():
    # The "Layout" section of the README is the map a newcomer reads: it must match the tree.
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ")] if "\n## " in layout else layout
    missing = []
    for folder in ("mochi", "pretrain", "transfer", "eval"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.stem in ("__init__", "__main__") or "assets" in path.parts:
                continue
            if path.parent.name == "cli":
                continue  # one module per subcommand: the folder is named, not each command
            if path.stem not in layout:
                missing.append(str(path.relative_to(ROOT)))
    for folder in ("mochi/data", "mochi/cli", "transfer/detectron2", "detectron_configs", "docs", "scripts"):
        if folder.split("/")[-1] + "/" not in layout:
            missing.append(folder + "/")
    assert missing == [], f"README Layout does not mention: {missing}"
