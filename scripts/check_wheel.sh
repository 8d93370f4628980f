#!/usr/bin/env bash
# The package as users get it: build the wheel, install it (not editable) into a fresh virtual environment,
# and run the command from a folder outside the checkout.
#
#   bash scripts/check_wheel.sh          # after scripts/setup.sh; scripts/test.sh runs it last
#
# 1. The wheel is built from a copy of the checkout's files (tracked and untracked-but-not-ignored), so a
#    stale build/ folder cannot leak into it; its contents are checked against the source folders
#    (scripts/check_wheel_contents.py).
# 2. The fresh environment reuses the project venv's installed libraries (torch, faiss, ...) through a .pth
#    file instead of downloading them again. Path lines in a .pth file do not run the .pth files of the
#    folders they add, so the project's editable install stays inactive there: `import mochi` must fail
#    before the wheel is installed and resolve inside the new environment after.
# 3. From a temporary folder: `mochi --help`, `python -m mochi --help`, and a tiny kNN whose record is
#    read back and validated. Any problem exits non-zero; the temporary folders are removed either way.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
say() { echo "check_wheel: $*"; }
die() { echo "check_wheel: error: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no project venv at $ROOT/.venv; run scripts/setup.sh first"
"$PY" -c "
import sys, setuptools
major = int(setuptools.__version__.split('.')[0])
sys.exit(0 if major >= 77 else 1)" \
  || die "building the wheel needs setuptools>=77 in .venv: .venv/bin/python -m pip install 'setuptools>=77'"

START=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mochi-check-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/src" "$WORK/dist" "$WORK/run"

# --- 1. build from a clean copy of the sources
cd "$ROOT"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$ROOT is not a git checkout (the file list comes from git)"
while IFS= read -r -d '' f; do
  # Regular files only: skips symlinks and tracked files deleted in the working tree.
  if [ -f "$f" ] && [ ! -L "$f" ]; then
    mkdir -p "$WORK/src/$(dirname "$f")"
    cp -p "$f" "$WORK/src/$f"
  fi
done < <(git ls-files -z --cached --others --exclude-standard)
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$WORK/dist" "$WORK/src" || die "building the wheel failed (see above)"
WHEELS=("$WORK"/dist/mochi_ssl-*.whl)
[ "${#WHEELS[@]}" -eq 1 ] && [ -f "${WHEELS[0]}" ] || die "expected one mochi_ssl wheel, found: $(ls "$WORK/dist")"
WHEEL="${WHEELS[0]}"
"$PY" "$ROOT/scripts/check_wheel_contents.py" "$WORK/src" "$WHEEL"

# --- 2. a fresh environment on top of the project venv's libraries, without the project itself
"$PY" -m venv --without-pip "$WORK/venv"
VPY="$WORK/venv/bin/python"
VSITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
# The project venv's site folders (several when that venv is itself layered on another through a .pth).
"$PY" -c "
import sys
for p in sys.path:
    if p.rstrip('/').endswith(('site-packages', 'dist-packages')):
        print(p)" >"$VSITE/zz-project-libraries.pth"
[ -s "$VSITE/zz-project-libraries.pth" ] || die "found no site-packages folder of $PY"

cd "$WORK/run"
unset PYTHONPATH
if "$VPY" -c "import mochi" 2>/dev/null; then
  die "mochi is importable in the fresh environment before the wheel is installed: the checkout leaks in"
fi
"$VPY" -m pip install --quiet --disable-pip-version-check --no-deps --no-index --ignore-installed "$WHEEL" \
  || die "installing the wheel failed (see above)"
"$VPY" - "$VSITE" <<'EOF' || die "the installed package does not resolve inside the fresh environment"
import sys
from importlib import metadata
from pathlib import Path

import mochi
import mochi.cli
import mochi.eval.knn
from mochi.data import folders

site = Path(sys.argv[1]).resolve()
for mod in (mochi, mochi.cli, mochi.eval.knn):
    path = Path(mod.__file__).resolve()
    if site not in path.parents:
        sys.exit(f"{mod.__name__} imported from {path}, not from {site}")
if not (folders.ASSETS / "imagenet100.txt").is_file():
    sys.exit(f"package data missing: {folders.ASSETS / 'imagenet100.txt'}")
dist = metadata.distribution("mochi-ssl")
if site not in Path(dist.locate_file("mochi")).resolve().parents:
    sys.exit(f"the mochi-ssl metadata found first is not the installed wheel's: {dist.locate_file('')}")
if mochi.__version__ != dist.version:
    sys.exit(f"mochi.__version__ {mochi.__version__} != installed {dist.version}")
print(f"check_wheel: mochi {dist.version} imported from {Path(mochi.__file__).parent}")
EOF
BUILT=$((SECONDS - START))

# --- 3. the commands, from outside the checkout
"$WORK/venv/bin/mochi" --help >"$WORK/help.txt" || die "'mochi --help' failed"
grep -q "knn" "$WORK/help.txt" || die "'mochi --help' does not list the knn command"
"$VPY" -m mochi --help >/dev/null || die "'python -m mochi --help' failed"
KNN_START=$SECONDS
"$WORK/venv/bin/mochi" knn --random-init -a resnet18 --data fashion-mnist-embedded --image-size 32 \
  --limit-train 200 --limit-test 100 -k 10 -q --cache-dir "$WORK/c" -o "$WORK/r" \
  || die "the tiny kNN run failed (see above)"
KNN=$((SECONDS - KNN_START))
"$VPY" - "$WORK/r" <<'EOF' || die "the kNN record is missing or invalid"
import json
import sys
from pathlib import Path

paths = list(Path(sys.argv[1]).rglob("*.json"))
if len(paths) != 1:
    sys.exit(f"expected one record in {sys.argv[1]}, found {len(paths)}")
record = json.loads(paths[0].read_text())
if record.get("task") != "knn" or not record.get("metrics"):
    sys.exit(f"unexpected record {paths[0].name}: task {record.get('task')!r}, metrics {record.get('metrics')!r}")
EOF
say "ok: wheel built, checked and installed in ${BUILT}s; commands and kNN from outside the checkout in $((SECONDS - START - BUILT))s (kNN ${KNN}s)"
