"""Pointers into docs/protocols.md: every cited heading exists, and no comment cites numbered sections.

Code and docs cite a protocol as ``docs/protocols.md#<anchor>`` (or ``protocols.md#<anchor>`` from a file
in docs/), where the anchor is the heading's GitHub slug.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "docs" / "protocols.md"
# Folders that are not the project's sources: environments, caches, build and run outputs.
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    ".cache",
    "build",
    "dist",
    "runs",
    "results",
    "__pycache__",
    "node_modules",
}
SKIP_SUFFIXES = {
    ".gz",
    ".npy",
    ".npz",
    ".pth",
    ".pt",
    ".tar",
    ".pkl",
    ".png",
    ".jpg",
    ".jpeg",
    ".whl",
    ".pyc",
}

CITATION = re.compile(r"protocols\.md#([\w-]+)")
# The numbered-section style that pointed outside the repository ("protocols.md" then a section sign).
NUMBERED = re.compile(r"protocols\.md\s*\u00a7")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Anchors of every heading outside fenced code blocks; repeats get ``-1``, ``-2``… as on GitHub."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def source_files() -> list[Path]:
    """Text-like files of the repository; skipped folders are pruned, symlinks are not followed."""
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(names):
            path = Path(folder) / name
            if not path.is_symlink() and path.suffix.lower() not in SKIP_SUFFIXES:
                files.append(path)
    return files


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def citations() -> dict[str, list[str]]:
    """``anchor -> ["file:line", ...]`` for every pointer into protocols.md in the repository."""
    found: dict[str, list[str]] = {}
    for path in source_files():
        text = read_text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                found.setdefault(m.group(1), []).append(f"{path.relative_to(ROOT)}:{lineno}")
    return found


def test_github_slug():
    assert github_slug("MoCo-v2 pretraining") == "moco-v2-pretraining"
    assert github_slug("Shuffle BN and split BN") == "shuffle-bn-and-split-bn"
    assert github_slug("The `sgd-grid` protocol (cached features)") == "the-sgd-grid-protocol-cached-features"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_every_cited_protocol_anchor_exists():
    headings = anchors(PROTOCOLS.read_text(encoding="utf-8"))
    cited = citations()
    # The scan must see the code's pointers (the kNN and linear modules cite their protocols).
    assert {"knn-classification", "linear-classification"} <= set(cited), sorted(cited)
    broken = {a: where for a, where in cited.items() if a not in headings}
    assert not broken, f"pointers to headings that docs/protocols.md lacks: {broken}"


def test_protocols_internal_links_resolve():
    text = PROTOCOLS.read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(#([\w-]+)\)", text))
    assert links, "the contents line of docs/protocols.md links its sections"
    assert links <= anchors(text), sorted(links - anchors(text))


def test_no_numbered_section_citations():
    offenders = []
    for path in source_files():
        text = read_text(path) or ""
        offenders += [
            f"{path.relative_to(ROOT)}:{i}"
            for i, line in enumerate(text.splitlines(), 1)
            if NUMBERED.search(line)
        ]
    assert not offenders, (
        f"numbered-section citations (cite docs/protocols.md#<heading> instead): {offenders}"
    )


def test_every_repository_path_named_in_the_docs_exists():
    # A moved module must not leave the README or docs pointing at its old place.
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(
        r"[`(]((?:mochi|pretrain|transfer|eval|scripts|benchmarks|tests|docs|detectron_configs)/[\w/.-]+"
        r"\.(?:py|sh|md|yaml|json|txt))[`)#]"
    )
    stale = []
    for doc in [root / "README.md", *(root / "docs").glob("*.md")]:
        for path in pattern.findall(doc.read_text()):
            if not (root / path).exists():
                stale.append(f"{doc.name}: {path}")
    assert stale == []
