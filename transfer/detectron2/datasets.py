"""Detection datasets for Detectron2: parse a dataset as the user gives it, register it, check its files.

A dataset is given as one of

- a name registered with Detectron2 (its builtins: ``voc_2007_trainval``, ``coco_2017_val``, …), read
  from ``$DETECTRON2_DATASETS``;
- ``ANNOTATIONS.json[:IMAGE_ROOT]``: COCO format; ``file_name`` relative to IMAGE_ROOT (default: the
  json's folder); classes are the json's categories in id order;
- ``DIR[:SPLIT]``: VOC layout (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/SPLIT.txt``) with class
  names given, or one a line in ``DIR/class_names.txt``; evaluated with the VOC2007 11-point AP.

:func:`parse_dataset` needs no Detectron2; :func:`register_dataset` and :func:`check_dataset` do (they
import it when called). Registration fills Detectron2's process-wide catalogs, under a name derived from
the resolved paths, so registering the same data twice is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mochi.errors import ConfigError, MochiError

#: Builtin Detectron2 dataset names worth suggesting when a name is not registered.
BUILTIN_EXAMPLES = "voc_2007_trainval, voc_2012_trainval, voc_2007_test, coco_2017_train, coco_2017_val"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as given by the user, and the name it is registered under in Detectron2."""

    spec: str  # as given: a registered name, ``ANN.json[:IMAGES]`` or ``VOCDIR[:SPLIT]``
    name: str
    kind: str  # builtin | coco | voc
    path: str = ""
    images: str = ""
    split: str = ""
    classes: tuple[str, ...] = ()


def parse_dataset(spec: str, *, default_split: str, classes: Sequence[str] | None = None) -> DatasetSpec:
    """``spec`` → :class:`DatasetSpec` (nothing registered yet; see :func:`register_dataset`).

    ``default_split``: the VOC split when ``spec`` names none. ``classes``: VOC class names (default: read
    from ``DIR/class_names.txt``, ``_background_`` skipped).
    """
    head, _, tail = spec.rpartition(":") if ":" in spec else (spec, "", "")
    path, extra = (head, tail) if head and not Path(spec).exists() else (spec, "")
    p = Path(path)
    if p.suffix == ".json":
        if not p.is_file():
            raise MochiError(f"dataset {spec!r}: COCO annotation file {p} not found")
        images = Path(extra) if extra else p.parent
        key = hashlib.sha1(f"{p.resolve()}|{images.resolve()}".encode()).hexdigest()[:10]
        return DatasetSpec(
            spec, f"mochi_coco_{p.stem}_{key}", "coco", str(p.resolve()), str(images.resolve())
        )
    if p.is_dir():
        split = extra or default_split
        names = tuple(classes) if classes else voc_class_names(p)
        key = hashlib.sha1(f"{p.resolve()}|{split}|{','.join(names)}".encode()).hexdigest()[:10]
        return DatasetSpec(spec, f"mochi_voc_{p.name}_{split}_{key}", "voc", str(p.resolve()), split=split,
                           classes=names)  # fmt: skip
    if "/" in spec or os.sep in spec or spec.endswith(".json"):
        raise MochiError(f"dataset {spec!r}: no such file or directory")
    return DatasetSpec(spec, spec, "builtin")


def dataset_specs(
    given: Sequence[str], config_names: Sequence[str], *, default_split: str, classes: Sequence[str] | None
) -> list[DatasetSpec]:
    """The datasets ``given`` (with ``classes`` for VOC layouts), else the config's ``config_names``."""
    if given:
        return [parse_dataset(s, default_split=default_split, classes=classes) for s in given]
    return [parse_dataset(s, default_split=default_split) for s in config_names]


def voc_class_names(root: Path) -> tuple[str, ...]:
    """Class names of a VOC-layout directory, from ``class_names.txt`` (or ``labels.txt``)."""
    for fname in ("class_names.txt", "labels.txt"):
        f = root / fname
        if f.is_file():
            names = [n.strip() for n in f.read_text().splitlines()]
            return tuple(n for n in names if n and n != "_background_")
    raise ConfigError(
        "classes",
        f"classes: none given, and VOC-layout dataset {root} has none; give them comma-separated "
        f"(a,b,c) or write them one a line to {root / 'class_names.txt'}",
    )


def register_dataset(ds: DatasetSpec) -> None:
    """Register a path dataset with Detectron2's catalogs (idempotent; builtins are already registered)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if ds.kind == "builtin" or ds.name in DatasetCatalog.list():
        return
    if ds.kind == "coco":
        from detectron2.data.datasets import register_coco_instances

        register_coco_instances(ds.name, {}, ds.path, ds.images)
        categories = json.loads(Path(ds.path).read_text()).get("categories", [])
        # The same list load_coco_json sets (sorted by id), known before the json is loaded for training.
        MetadataCatalog.get(ds.name).thing_classes = [
            c["name"] for c in sorted(categories, key=lambda c: c["id"])
        ]
    else:
        from detectron2.data.datasets.pascal_voc import register_pascal_voc

        bad = [c for c in ds.classes if "/" in c or not c.strip()]
        if bad:
            raise MochiError(
                f"VOC-layout dataset {ds.path}: class names {bad} cannot be used (Detectron2's VOC evaluator "
                "writes one file per class name): rename them in class_names.txt and the annotations"
            )
        # year 2007: the VOC2007 11-point AP of the protocol.
        register_pascal_voc(ds.name, ds.path, ds.split, 2007, list(ds.classes))
        MetadataCatalog.get(ds.name).evaluator_type = "pascal_voc"  # set for the builtins only


def check_dataset(ds: DatasetSpec) -> list[str]:
    """Class names of a registered dataset, after checking that its files exist (a clear error if not)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if ds.name not in DatasetCatalog.list():
        raise MochiError(
            f"dataset {ds.spec!r} is not registered with Detectron2: give a Detectron2 builtin name "
            f"({BUILTIN_EXAMPLES}, ...), a COCO json (ANNOTATIONS.json[:IMAGE_ROOT]) or a VOC-layout "
            "directory (DIR[:SPLIT])"
        )
    meta = MetadataCatalog.get(ds.name)
    if hasattr(meta, "dirname"):  # VOC layout
        root = Path(meta.dirname)
        needed = [
            root / "Annotations",
            root / "JPEGImages",
            root / "ImageSets" / "Main" / f"{meta.split}.txt",
        ]
    elif hasattr(meta, "json_file"):
        needed = [Path(meta.json_file), Path(meta.image_root)]
    else:
        needed = []
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        where = (
            f" Detectron2's builtin datasets live under $DETECTRON2_DATASETS "
            f"(now {os.environ.get('DETECTRON2_DATASETS', 'unset: ./datasets')}): VOC2007/, VOC2012/, coco/."
            if ds.kind == "builtin"
            else ""
        )
        raise MochiError(f"dataset {ds.spec!r}: missing {', '.join(missing)}.{where}")
    classes = list(getattr(meta, "thing_classes", []) or [])
    if not classes:
        raise MochiError(f"dataset {ds.spec!r}: Detectron2 knows no class names (thing_classes) for it")
    return classes


def shared_classes(datasets: Sequence[DatasetSpec]) -> list[str]:
    """Register and check every dataset; their class names, which must be the same for all of them."""
    class_lists = {}
    for ds in datasets:
        register_dataset(ds)
        class_lists[ds.spec] = check_dataset(ds)
    first_spec = datasets[0].spec
    first = class_lists[first_spec]
    differ = [s for s, c in class_lists.items() if c != first]
    if differ:
        raise MochiError(f"datasets {differ} have different classes from {first_spec!r}: {first}")
    return first
