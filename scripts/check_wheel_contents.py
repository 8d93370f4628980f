"""Check a built wheel against the source tree it was built from (used by scripts/check_wheel.sh).

    python scripts/check_wheel_contents.py SOURCE_ROOT WHEEL

- every file of every folder mapped in ``[tool.setuptools] package-dir`` (modules, the embedded
  Fashion-MNIST subset, the ImageNet-100 list, the Detectron2 configs) is in the wheel at its package
  path, and the wheel holds nothing else besides its ``.dist-info``: a sub-package missing from
  ``packages`` or a data file missing from ``package-data`` fails here;
- the metadata carries the SPDX licence (``License-Expression: MIT``) and the ``LICENSE`` file, byte for
  byte, and the ``mochi`` console script.

Exit status 1 with one line per problem.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

SKIP_PARTS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def expected_files(root: Path) -> set[str]:
    """Wheel paths of every file in the folders that ``package-dir`` maps to packages."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    out: set[str] = set()
    for package, folder in config["package-dir"].items():
        base = root / folder
        for path in base.rglob("*"):
            rel = path.relative_to(base)
            if not path.is_file() or SKIP_PARTS & set(rel.parts) or path.suffix in SKIP_SUFFIXES:
                continue
            out.add(str(PurePosixPath(*package.split("."), *rel.parts)))
    return out


def check(root: Path, wheel: Path) -> list[str]:
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        if len(dist_info) != 1:
            return [f"expected one .dist-info folder, found {sorted(dist_info)}"]
        (info,) = dist_info
        shipped = {n for n in names if not n.startswith(info + "/")}
        expected = expected_files(root)
        problems += [f"missing from the wheel: {n}" for n in sorted(expected - shipped)]
        problems += [f"in the wheel but not in the source folders: {n}" for n in sorted(shipped - expected)]

        meta = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        if meta.get("License-Expression") != "MIT":
            problems.append(f"METADATA License-Expression is {meta.get('License-Expression')!r}, not 'MIT'")
        if "LICENSE" not in (meta.get_all("License-File") or []):
            problems.append("METADATA does not list License-File: LICENSE")
        licence = f"{info}/licenses/LICENSE"
        if licence not in names:
            problems.append(f"missing from the wheel: {licence}")
        elif zf.read(licence) != (root / "LICENSE").read_bytes():
            problems.append(f"{licence} differs from LICENSE")
        entry_file = f"{info}/entry_points.txt"
        entry_points = zf.read(entry_file).decode() if entry_file in names else ""
        if "mochi = mochi.cli:main" not in entry_points:
            problems.append("entry_points.txt lacks the console script 'mochi = mochi.cli:main'")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root, wheel = Path(argv[0]), Path(argv[1])
    problems = check(root, wheel)
    for p in problems:
        print(f"check_wheel_contents: {p}", file=sys.stderr)
    if not problems:
        with zipfile.ZipFile(wheel) as zf:
            n = len(zf.namelist())
        print(f"check_wheel_contents: {wheel.name}: {n} files, as the source folders say")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
