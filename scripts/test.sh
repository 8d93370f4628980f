#!/usr/bin/env bash
# Lint, then the whole test suite, then the package as users get it (scripts/check_wheel.sh: the wheel
# installed into a fresh virtual environment). pytest's "no tests collected" (exit 5) is a failure here.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
bash scripts/check_wheel.sh
