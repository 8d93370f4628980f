"""Make Detectron2 v0.6's Python sources work without compiled ops on current numpy, Pillow and setuptools.

Used by ``scripts/install_detectron2.sh`` on its offline route: the ``pb1-detectron2==0.6`` sdist on PyPI
is upstream Detectron2 v0.6's Python code (Apache-2.0) without the C++/CUDA sources. torchvision supplies
RoIAlign and NMS, so the standard Faster/Mask R-CNN models need no compiled op; these fixes make the rest
import and run:

1. ``detectron2/_C.py``: a placeholder for the compiled extension (imported at module level by deformable
   conv, rotated boxes and the fast COCO evaluator); anything but the version queries raises a clear error.
2. ``Image.LINEAR`` (removed in Pillow 10) -> ``Image.BILINEAR``.
3. ``model_zoo.get_config_file`` without ``pkg_resources`` (gone from current setuptools).
4. numpy aliases removed in numpy 1.24 (``np.int``, ``np.float``, ``np.str``, ``np.bool``) -> builtins.
5. ``COCOEvaluator``: fall back to pycocotools' ``COCOeval`` when the compiled fast evaluator is absent.
6. ``setup.py``: a minimal one that builds no extension, does not import torch, ships the model-zoo configs
   and declares the runtime dependencies.
7. ``hooks.LRScheduler`` checkpoints the scheduler only if it is a ``_LRScheduler``; since torch 2.0 the
   built-in schedulers (``StepLR``...) derive from ``LRScheduler`` instead, so their state was silently
   not saved or restored: test against ``LRScheduler``.
8. ``MapDataset``: ``random.sample`` on a set is a TypeError from Python 3.11 on; the fallback index after
   a failed mapping is drawn from the sorted candidates instead.

Every text fix asserts that the exact text it replaces is present (so a different upstream version fails
loudly) and recognises its own result (so running twice is a no-op).

Usage: python scripts/patch_detectron2.py SOURCE_DIR
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

# Written into every file we create, so a re-run recognises its own output.
MARKER = "Written by mochi's scripts/patch_detectron2.py"

#: Version of the installed distribution: upstream 0.6, local label saying "no compiled ops".
DIST_VERSION = "0.6+purepython"

#: Runtime dependencies actually needed by training/evaluation (measured; black, future, pydot, hydra,
#: matplotlib are only for optional features). fvcore/iopath pinned as upstream v0.6 requires.
RUNTIME_REQUIREMENTS = [
    "fvcore==0.1.5.post20221221",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "yacs>=0.1.8",
    "pycocotools>=2.0.2",
    "tabulate",
    "termcolor>=1.1",
    "cloudpickle",
    "PyYAML>=5.1",
    "tqdm>4.29.0",
    "tensorboard",
    "Pillow>=7.1",
    "numpy",
]

PLACEHOLDER_C = f'''"""Placeholder for Detectron2's compiled extension ``detectron2._C`` (pure-Python).

{MARKER}. This Detectron2 was installed without compiled ops: torchvision provides RoIAlign and
NMS, which is all the standard Faster / Mask R-CNN models need. Only deformable convolution, rotated boxes
(RotatedBoxes IoU, ROIAlignRotated, rotated NMS) and the fast COCO evaluator need the compiled ops; using
them raises ``CompiledOpUnavailableError`` (a RuntimeError, and an AttributeError so that ``hasattr``
feature checks keep working).
"""

PURE_PYTHON_BUILD = True

_NOT_COMPILED = "none (pure-Python Detectron2 install, no compiled ops)"
_FIX = (
    "install the official source build instead: "
    "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
)


class CompiledOpUnavailableError(RuntimeError, AttributeError):
    """A compiled Detectron2 op was used in a pure-Python install."""


def get_compiler_version() -> str:
    return _NOT_COMPILED


def get_cuda_version() -> str:
    return _NOT_COMPILED


def has_cuda() -> bool:
    """Whether the extension was built with CUDA kernels: never, there is no extension."""
    return False


def __getattr__(name: str):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise CompiledOpUnavailableError(
        f"detectron2._C.{{name}} is a compiled Detectron2 op (deformable convolution, rotated boxes or the "
        f"fast COCO evaluator) and this Detectron2 is a pure-Python install without compiled ops; "
        f"use a model without these ops, or {{_FIX}}"
    )
'''

MINIMAL_SETUP = f'''# {MARKER}: replaces the upstream setup.py, which imports torch and
# compiles C++/CUDA sources this sdist does not contain. Builds no extension; ships the model-zoo configs.
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# Upstream installs a few small projects as detectron2.projects.<name>.
PROJECTS = {{
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}}
PROJECTS = {{name: path for name, path in PROJECTS.items() if (HERE / path / "__init__.py").is_file()}}
CONFIGS = HERE / "detectron2" / "model_zoo"
CONFIG_FILES = sorted(
    str(p.relative_to(CONFIGS)) for p in (CONFIGS / "configs").rglob("*") if p.suffix in (".yaml", ".py")
)

setup(
    name="detectron2",
    version="{DIST_VERSION}",
    description="Detectron2 v0.6 Python code without compiled ops (torchvision provides RoIAlign and NMS)",
    url="https://github.com/facebookresearch/detectron2",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["detectron2", "detectron2.*"], exclude=["detectron2.model_zoo.configs*"])
    + list(PROJECTS),
    package_dir=PROJECTS,
    package_data={{"detectron2.model_zoo": CONFIG_FILES}},
    include_package_data=False,
    install_requires={RUNTIME_REQUIREMENTS!r},
    zip_safe=False,
)
'''


class PatchError(RuntimeError):
    """The source tree is not the Detectron2 version these fixes were written for."""


def replace_exact(root: Path, rel: str, old: str, new: str, count: int = 1) -> str:
    """Replace ``old`` (expected exactly ``count`` times) by ``new`` in ``root/rel``; idempotent."""
    path = root / rel
    text = path.read_text()
    if new in text:  # checked first: an insertion keeps ``old`` inside ``new``
        return f"{rel}: already patched"
    found = text.count(old)
    if found != count:
        raise PatchError(f"{rel}: expected {count} occurrence(s) of {old!r}, found {found}")
    path.write_text(text.replace(old, new))
    return f"{rel}: patched ({count}x)"


def write_placeholder_c(root: Path) -> str:
    """Fix 1: ``detectron2/_C.py`` placeholder for the compiled extension."""
    path = root / "detectron2" / "_C.py"
    compiled = [p.name for p in path.parent.glob("_C.*") if p.suffix in (".so", ".pyd")]
    if compiled:
        raise PatchError(f"detectron2/ already has a compiled extension {compiled}; nothing to replace")
    if path.exists() and MARKER not in path.read_text():
        raise PatchError(f"{path} exists and was not written by this script")
    for user in ("layers/deform_conv.py", "evaluation/fast_eval_api.py"):
        if "from detectron2 import _C" not in (root / "detectron2" / user).read_text():
            raise PatchError(f"detectron2/{user} no longer imports _C; check the placeholder is still needed")
    if path.exists() and path.read_text() == PLACEHOLDER_C:
        return "detectron2/_C.py: already written"
    path.write_text(PLACEHOLDER_C)
    return "detectron2/_C.py: written"


def fix_pillow_linear(root: Path) -> str:
    """Fix 2: ``Image.LINEAR`` was an alias of ``Image.BILINEAR``, removed in Pillow 10."""
    return replace_exact(
        root,
        "detectron2/data/transforms/transform.py",
        "interp=Image.LINEAR,",
        "interp=Image.BILINEAR,",
    )


def fix_model_zoo_pkg_resources(root: Path) -> str:
    """Fix 3: locate the bundled configs next to ``model_zoo.py`` instead of via ``pkg_resources``."""
    rel = "detectron2/model_zoo/model_zoo.py"
    results = [
        replace_exact(
            root,
            rel,
            "from typing import Optional\nimport pkg_resources\nimport torch\n",
            "from typing import Optional\nimport torch\n",
        ),
        replace_exact(
            root,
            rel,
            'cfg_file = pkg_resources.resource_filename(\n        "detectron2.model_zoo", '
            'os.path.join("configs", config_path)\n    )',
            "# Configs ship as package data next to this module (current setuptools has no resource API).\n"
            '    cfg_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)',
        ),
    ]
    if "pkg_resources" in (root / rel).read_text():
        raise PatchError(f"{rel}: still uses pkg_resources after patching")
    return "; ".join(results)


# np.int / np.float / np.str / np.bool (not np.int64, np.bool_, ...) were aliases of the builtins.
_NUMPY_ALIAS = re.compile(r"\bnp\.(int|float|str|bool)\b(?![\w.])")
# Sites known in v0.6; checked after the search so a different upstream tree is noticed.
_NUMPY_KNOWN_SITES = {
    "detectron2/data/build.py": "histogram = np.zeros((num_classes,), dtype=int)",
    "detectron2/data/datasets/pascal_voc.py": "fileids = np.loadtxt(f, dtype=str)",
    "detectron2/evaluation/pascal_voc_evaluation.py": ".astype(bool)",
}


def fix_numpy_aliases(root: Path) -> str:
    """Fix 4: replace removed numpy aliases by the builtins they stood for, in every source file."""
    changed = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        new, n = _NUMPY_ALIAS.subn(lambda m: m.group(1), text)
        if n:
            path.write_text(new)
            changed.append(f"{path.relative_to(root)} ({n})")
    for rel, expected in _NUMPY_KNOWN_SITES.items():
        if expected not in (root / rel).read_text():
            raise PatchError(f"{rel}: expected {expected!r} after replacing numpy aliases")
    return "numpy aliases: " + (", ".join(changed) if changed else "already patched")


def fix_coco_fast_eval(root: Path) -> str:
    """Fix 5: ``COCOEvaluator(use_fast_impl=True)`` needs the compiled evaluator; fall back to pycocotools."""
    rel = "detectron2/evaluation/coco_evaluation.py"
    return "; ".join(
        [
            replace_exact(
                root,
                rel,
                "from detectron2.evaluation.fast_eval_api import COCOeval_opt\n",
                "from detectron2.evaluation.fast_eval_api import COCOeval_opt\n"
                "from detectron2 import _C as _compiled_ops\n",
            ),
            replace_exact(
                root,
                rel,
                "\n\nclass COCOEvaluator(DatasetEvaluator):",
                "\n\n# Pure-Python install (no compiled ops): no fast evaluator, use pycocotools' COCOeval.\n"
                '_HAS_FAST_COCOEVAL = hasattr(_compiled_ops, "COCOevalAccumulate")\n'
                "\n\nclass COCOEvaluator(DatasetEvaluator):",
            ),
            replace_exact(
                root,
                rel,
                "self._use_fast_impl = use_fast_impl\n",
                "self._use_fast_impl = use_fast_impl and _HAS_FAST_COCOEVAL\n",
            ),
            replace_exact(
                root,
                rel,
                "coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)",
                "coco_eval = (COCOeval_opt if use_fast_impl and _HAS_FAST_COCOEVAL else COCOeval)(\n"
                "        coco_gt, coco_dt, iou_type\n    )",
            ),
        ]
    )


def write_minimal_setup(root: Path) -> str:
    """Fix 6: setup.py that builds no extension, does not import torch and ships the model-zoo configs."""
    path = root / "setup.py"
    if MARKER in path.read_text():
        status = "setup.py: already replaced"
    else:
        if "get_extensions()" not in path.read_text():
            raise PatchError("setup.py is not upstream v0.6's (no get_extensions()); refusing to replace it")
        status = "setup.py: replaced"
    path.write_text(MINIMAL_SETUP)
    if not list((root / "detectron2" / "model_zoo" / "configs").rglob("*.yaml")):
        raise PatchError("detectron2/model_zoo/configs has no yaml files; the model zoo would be empty")
    # Stale metadata of the original distribution (pb1-detectron2) must not reach the build.
    for stale in root.glob("*.egg-info"):
        shutil.rmtree(stale)
    (root / "PKG-INFO").unlink(missing_ok=True)
    # A pyproject.toml (none in 0.6) could name a build backend that imports torch.
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        pyproject.unlink()
    return status


def fix_lr_scheduler_state(root: Path) -> str:
    """Fix 7: the LRScheduler hook checkpoints every torch scheduler, not only ``_LRScheduler`` subclasses."""
    return (
        replace_exact(
            root,
            "detectron2/engine/hooks.py",
            "if isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler):",
            "if isinstance(self.scheduler, _TORCH_LR_SCHEDULER):",
            count=2,
        )
        + "; "
        + replace_exact(
            root,
            "detectron2/engine/hooks.py",
            "class LRScheduler(HookBase):",
            "# torch >= 2.0: schedulers derive from LRScheduler (_LRScheduler is a deprecated subclass).\n"
            "_TORCH_LR_SCHEDULER = getattr(\n"
            '    torch.optim.lr_scheduler, "LRScheduler", torch.optim.lr_scheduler._LRScheduler\n'
            ")\n\n\nclass LRScheduler(HookBase):",
        )
    )


def fix_map_dataset_sample(root: Path) -> str:
    """Fix 8: ``random.sample`` needs a sequence (Python >= 3.11 refuses a set)."""
    return replace_exact(
        root,
        "detectron2/data/common.py",
        "cur_idx = self._rng.sample(self._fallback_candidates, k=1)[0]",
        "cur_idx = self._rng.sample(sorted(self._fallback_candidates), k=1)[0]",
    )


FIXES = (
    write_placeholder_c,
    fix_pillow_linear,
    fix_model_zoo_pkg_resources,
    fix_numpy_aliases,
    fix_coco_fast_eval,
    write_minimal_setup,
    fix_lr_scheduler_state,
    fix_map_dataset_sample,
)


def patch_tree(root: Path) -> list[str]:
    """Apply every fix to the unpacked sdist at ``root``; returns one status line per fix."""
    init = root / "detectron2" / "__init__.py"
    if not init.is_file():
        raise PatchError(f"{root} is not a Detectron2 source tree (no detectron2/__init__.py)")
    if '__version__ = "0.6"' not in init.read_text():
        raise PatchError(f"{init}: these fixes were written for Detectron2 0.6")
    return [fix(root) for fix in FIXES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source_dir", type=Path, help="unpacked pb1-detectron2 0.6 sdist")
    args = parser.parse_args(argv)
    try:
        for line in patch_tree(args.source_dir):
            print(f"patch_detectron2: {line}")
    except PatchError as e:
        print(f"patch_detectron2: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
