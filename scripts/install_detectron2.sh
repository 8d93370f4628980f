#!/usr/bin/env bash
# Install a working Detectron2 into the project's venv. Optional: only detection transfer needs it.
#
#   bash scripts/install_detectron2.sh                     # into ./.venv
#   PYTHON=/path/to/venv/bin/python bash scripts/install_detectron2.sh
#
# Route, the first that applies:
#   existing  a Detectron2 that imports (with build_model) is kept; nothing is changed.
#   official  GitHub reachable: the official source build (compiles Detectron2's C++/CUDA ops).
#   offline   otherwise: upstream v0.6's Python code from PyPI (the pb1-detectron2 0.6 sdist), patched by
#             scripts/patch_detectron2.py and installed without compiled ops (torchvision provides
#             RoIAlign and NMS; deformable conv, rotated boxes and the fast COCO evaluator are unavailable).
# Force a route with D2_ROUTE=official|offline (default: auto). After installing, a smoke test builds
# Faster R-CNN R50-C4 and R50-FPN on CPU and runs an inference and a training forward pass.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
ROUTE="${D2_ROUTE:-auto}"
OFFICIAL_URL="https://github.com/facebookresearch/detectron2.git"
SDIST="pb1-detectron2==0.6"

say() { echo "install_detectron2: $*"; }
die() { echo "install_detectron2: error: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || die "no python at '$PYTHON'; run scripts/setup.sh first or set PYTHON=<venv>/bin/python"
case "$ROUTE" in auto | official | offline) ;; *) die "D2_ROUTE must be auto, official or offline, not '$ROUTE'" ;; esac
PIP=("$PYTHON" -m pip --disable-pip-version-check)

# (a) Keep a working install (one interpreter start: importing Detectron2 takes seconds).
if [ "$ROUTE" = auto ] && EXISTING="$("$PYTHON" -W ignore -c "
import os, detectron2
from detectron2.modeling import build_model
print(detectron2.__version__, 'at', os.path.dirname(detectron2.__file__))" 2>/dev/null)"; then
  say "route=existing: detectron2 $EXISTING (kept; D2_ROUTE=offline or official replaces it)"
  exit 0
fi
"$PYTHON" -c "import torch, torchvision" 2>/dev/null \
  || die "torch and torchvision must be importable by $PYTHON (run scripts/setup.sh first)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/install_detectron2.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Build tools kept out of the venv, used through PYTHONPATH: setuptools>=70.1 ships bdist_wheel (an
# --no-build-isolation build needs it; older venvs have neither it nor `wheel`), and pip<26, because pip 26
# refuses the pb1-detectron2 sdist's metadata (a direct-URL dependency in its `all` extra).
build_tools() {
  "${PIP[@]}" install --quiet --target "$WORK/tools" "pip>=23,<26" "setuptools>=70.1,<81" \
    || die "could not fetch build tools (pip<26, setuptools>=70.1) from the package index"
}

github_reachable() {
  command -v git >/dev/null 2>&1 || return 1
  GIT_TERMINAL_PROMPT=0 timeout 5 git ls-remote --exit-code "$OFFICIAL_URL" HEAD >/dev/null 2>&1
}

if [ "$ROUTE" = auto ]; then
  if github_reachable; then ROUTE=official; else ROUTE=offline; fi
fi

if [ "$ROUTE" = official ]; then
  # (b) Official source build; needs a C++ compiler (and CUDA toolkit for GPU ops) and torch importable.
  say "route=official: building from $OFFICIAL_URL (this compiles C++/CUDA code, several minutes)"
  build_tools
  PYTHONPATH="$WORK/tools" "$PYTHON" -m pip install --no-build-isolation "git+$OFFICIAL_URL" \
    || die "official source build failed (GitHub unreachable or no C++ compiler?); D2_ROUTE=offline installs the pure-Python route"
else
  # (c) Offline route: PyPI only, no compiler.
  say "route=offline: $SDIST (upstream v0.6 Python code) patched, without compiled ops"
  build_tools
  # Its setup.py imports torch even to report metadata: run with this venv's python, no build isolation.
  PYTHONPATH="$WORK/tools" "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: --no-build-isolation "$SDIST" -d "$WORK/sdist" \
    || die "could not download the $SDIST sdist from the package index"
  mkdir -p "$WORK/src"
  tar -xzf "$WORK"/sdist/pb1-detectron2-*.tar.gz -C "$WORK/src"
  SRC="$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
  "$PYTHON" "$ROOT/scripts/patch_detectron2.py" "$SRC" || die "patching $SDIST failed (see above)"
  PYTHONPATH="$WORK/tools" "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation "$SRC" -w "$WORK/wheel" || die "building the patched Detectron2 wheel failed"
  # Same version number as a previous offline install: remove that one so pip does not skip the wheel.
  if "${PIP[@]}" show --quiet detectron2 >/dev/null 2>&1; then
    say "replacing the installed detectron2"
    "${PIP[@]}" uninstall --quiet --yes detectron2
  fi
  # The wheel declares the runtime dependencies (fvcore, iopath<0.1.10, omegaconf, pycocotools, ...).
  "${PIP[@]}" install --quiet "$WORK"/wheel/detectron2-*.whl || die "installing Detectron2 failed"
fi

# (d) Smoke test of what was installed.
"$PYTHON" "$ROOT/scripts/check_detectron2.py" --smoke --route "$ROUTE" \
  || die "Detectron2 was installed but the smoke test failed (see above)"
