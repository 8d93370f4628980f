"""Fetch the small real-photo detection datasets the Detectron2 tests use, into an ignored cache folder.

  python scripts/fetch_detection_testdata.py            # -> .cache/testdata/labelme-6.3.1/{coco,voc}
  python scripts/fetch_detection_testdata.py --dest DIR

Source: the ``labelme==6.3.1`` sdist on PyPI (downloaded with pip, never installed). Its examples hold
3 PASCAL VOC 2011 photos with 12 polygon instances (person, bus, bottle, car, chair, sofa), as a COCO
json with masks (``examples/instance_segmentation/data_dataset_coco``) and as VOC XML
(``examples/bbox_detection/data_dataset_voc``). labelme is GPL-3.0 and the photos come from PASCAL VOC
(Flickr images under their owners' terms), so the files are **not committed** to this MIT repository:
this step, run by ``scripts/setup.sh`` where PyPI is reachable, caches them; the tests skip with this
command as the reason when the cache is absent.

Written as ready-to-use datasets for ``mochi detect``:

- ``coco/annotations.json`` + ``coco/JPEGImages/`` — unchanged from the sdist;
- ``voc/`` — ``Annotations/`` normalised to what Detectron2's VOC evaluator parses (integer pixel
  coordinates, ``pose``/``truncated``/``difficult`` filled in), ``JPEGImages/``, ``ImageSets/Main/
  {trainval,test}.txt`` (all 3 images in both: a smoke set, not a benchmark) and ``class_names.txt``
  (the classes present).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

VERSION = "6.3.1"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".cache" / "testdata" / f"labelme-{VERSION}"
COCO_SRC = "examples/instance_segmentation/data_dataset_coco"
VOC_SRC = "examples/bbox_detection/data_dataset_voc"


def normalise_voc_xml(text: str) -> tuple[str, list[str]]:
    """labelme's VOC XML → the strict form parse_rec reads; returns the XML and the object names."""
    tree = ET.ElementTree(ET.fromstring(text))
    names = []
    for obj in tree.getroot().findall("object"):
        names.append(obj.find("name").text)
        for tag, default in (("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            node = obj.find(tag)
            if node is None:
                node = ET.SubElement(obj, tag)
            if not (node.text or "").strip():
                node.text = default
        for node in obj.find("bndbox"):
            node.text = str(round(float(node.text)))
    return ET.tostring(tree.getroot(), encoding="unicode"), names


def build(sdist_root: Path, dest: Path) -> None:
    coco_src, voc_src = sdist_root / COCO_SRC, sdist_root / VOC_SRC
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(coco_src / "JPEGImages", tmp / "coco" / "JPEGImages")
    shutil.copy(coco_src / "annotations.json", tmp / "coco" / "annotations.json")
    voc = tmp / "voc"
    shutil.copytree(voc_src / "JPEGImages", voc / "JPEGImages")
    (voc / "Annotations").mkdir(parents=True)
    present: set[str] = set()
    stems = []
    for xml in sorted((voc_src / "Annotations").glob("*.xml")):
        text, names = normalise_voc_xml(xml.read_text())
        (voc / "Annotations" / xml.name).write_text(text)
        present.update(names)
        stems.append(xml.stem)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("trainval", "test"):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    (voc / "class_names.txt").write_text("".join(f"{n}\n" for n in sorted(present)))
    (tmp / "SOURCE.txt").write_text(
        f"From the labelme=={VERSION} sdist (PyPI), {COCO_SRC} and {VOC_SRC};\n"
        "labelme is GPL-3.0, the photos are PASCAL VOC 2011 images (Flickr, their owners' terms).\n"
        "Test data only; not redistributed.\n"
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--force", action="store_true", help="fetch again even if the cache exists")
    args = parser.parse_args(argv)
    if (args.dest / "SOURCE.txt").is_file() and not args.force:
        print(f"fetch_detection_testdata: present at {args.dest}")
        return 0
    with tempfile.TemporaryDirectory(prefix="labelme_sdist_") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--no-binary", ":all:", f"labelme=={VERSION}", "-d", tmp]  # fmt: skip
        if subprocess.run(cmd).returncode != 0:
            print("fetch_detection_testdata: pip download of the labelme sdist failed (PyPI unreachable?); "
                  "the real-photo Detectron2 tests will be skipped", file=sys.stderr)  # fmt: skip
            return 1
        (sdist,) = Path(tmp).glob("labelme-*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if f"/{COCO_SRC}/" in m.name or f"/{VOC_SRC}/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        build(Path(tmp) / f"labelme-{VERSION}", args.dest)
    print(f"fetch_detection_testdata: wrote {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
