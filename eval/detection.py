"""Detection / instance-segmentation transfer: fine-tune Detectron2 from a backbone, once per seed.

``run_detection`` is ``mochi detect``: convert the checkpoint (the Detectron2 writer of
``mochi.transfer``), then for each seed train and evaluate through Detectron2's ``DefaultTrainer`` and
``launch`` (multi-GPU, multi-node), write one result record per seed and one aggregate record.

Output layout (``output``)::

    backbone.pkl            the converted checkpoint (MODEL.WEIGHTS of every seed)
    seed<k>/                Detectron2's OUTPUT_DIR: checkpoints, metrics.json, log.txt, config.yaml
    seed<k>/record.json     the seed's record once evaluated: a finished seed is never rerun
    aggregate.json          the aggregate record of the seeds last aggregated
    results/                every record, one file each (``--results``)

An interrupted seed resumes from its last Detectron2 checkpoint (``resume_or_load(resume=True)``);
the data order and augmentation after a resume follow the seed again from the resumed iteration,
so a resumed run is not bit-identical to an uninterrupted one.

Aggregation: mean and **sample** standard deviation (``n - 1`` in the denominator, as the MoCo papers'
"mean of 5 runs ± std"); ``std`` is ``None`` for a single seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mochi.errors import MochiError
from mochi.io import atomic_write_json, atomic_write_text

from .records import make_record, write_record

INSTALL_HINT = (
    "Detectron2 is not installed; `mochi detect` needs it. Install it into this environment with the "
    "project's step: PYTHON=$(which python) bash scripts/install_detectron2.sh  (it keeps an existing "
    "Detectron2, builds the official one where GitHub is reachable, else installs the offline route); "
    "or follow https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
)

#: Config keys whose value is a norm type, rewritten together by :func:`choose_norm`.
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")
SYNC_NORMS = ("SyncBN", "naiveSyncBN")
NORM_CHOICES = ("auto", "config", "BN", "SyncBN", "naiveSyncBN")

#: Record metric name → (Detectron2 evaluator task, metric). Box AP keeps the plain names, so VOC and COCO
#: box numbers read alike; mask AP is prefixed.
METRICS = {
    "AP": ("bbox", "AP"),
    "AP50": ("bbox", "AP50"),
    "AP75": ("bbox", "AP75"),
    "mask_AP": ("segm", "AP"),
    "mask_AP50": ("segm", "AP50"),
    "mask_AP75": ("segm", "AP75"),
}


def require_detectron2() -> None:
    """Raise :class:`MochiError` with the install command when Detectron2 cannot be imported."""
    try:
        import detectron2  # noqa: F401
    except ImportError as err:
        raise MochiError(f"{INSTALL_HINT} (import error: {err})") from None


# ---------------------------------------------------------------------------------------------- configs


def resolve_config(config: str) -> Path:
    """A shipped config name (``voc07_R50_C4_24k``) or a path to a yaml file."""
    from mochi.detectron_configs import config_names, config_path

    path = Path(config)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = config_path(config)
    if shipped.is_file() and not shipped.stem.startswith("Base-"):
        return shipped
    raise MochiError(
        f"--config {config!r}: neither a shipped config ({', '.join(config_names())}) nor a yaml file"
    )


def choose_norm(norms: Mapping[str, str], world_size: int, norm: str = "auto") -> dict[str, str]:
    """The norm type for each of ``norms`` (config key → value) in a run of ``world_size`` processes.

    ``auto``: synchronised BN (``SyncBN``, ``naiveSyncBN``) becomes ``BN`` when there is one process
    (it needs a process group and would only compute plain BN anyway); anything else is kept.
    ``config``: keep the config's values. ``BN`` / ``SyncBN`` / ``naiveSyncBN``: force that type on every
    key that is normalised (a key set to ``""`` — no norm — stays unnormalised).
    """
    if norm not in NORM_CHOICES:
        raise MochiError(f"--norm {norm!r}: choose one of {', '.join(NORM_CHOICES)}")
    out = {}
    for key, value in norms.items():
        if norm == "config" or not value:
            out[key] = value
        elif norm == "auto":
            out[key] = "BN" if value in SYNC_NORMS and world_size <= 1 else value
        else:
            out[key] = norm
    return out


def load_config(config: str):
    """``get_cfg()`` merged with ``config`` (shipped name or path); the ExtraNorm head is registered."""
    require_detectron2()
    from detectron2.config import get_cfg

    import mochi.transfer.detectron2_head  # noqa: F401 - registers Res5ROIHeadsExtraNorm

    cfg = get_cfg()
    cfg.merge_from_file(str(resolve_config(config)))
    return cfg


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg, key: str, value) -> None:
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


# --------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as given on the command line, and the name it is registered under in Detectron2."""

    spec: str  # as given: a registered name, ``ANN.json[:IMAGES]`` or ``VOCDIR[:SPLIT]``
    name: str
    kind: str  # builtin | coco | voc
    path: str = ""
    images: str = ""
    split: str = ""
    classes: tuple[str, ...] = ()


def parse_dataset(spec: str, *, default_split: str, classes: Sequence[str] | None = None) -> DatasetSpec:
    """``spec`` → :class:`DatasetSpec` (nothing registered yet; see :func:`register_dataset`).

    - a name registered with Detectron2 (its builtins: ``voc_2007_trainval``, ``coco_2017_val``, …);
    - ``ANNOTATIONS.json[:IMAGE_ROOT]``: COCO format; ``file_name`` relative to IMAGE_ROOT (default: the
      json's folder);
    - ``DIR[:SPLIT]``: VOC layout (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/SPLIT.txt``;
      SPLIT defaults to ``default_split``) with class names from ``classes`` or ``DIR/class_names.txt``
      (one a line; ``_background_`` skipped).
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
        names = tuple(classes) if classes else _voc_class_names(p)
        key = hashlib.sha1(f"{p.resolve()}|{split}|{','.join(names)}".encode()).hexdigest()[:10]
        return DatasetSpec(spec, f"mochi_voc_{p.name}_{split}_{key}", "voc", str(p.resolve()), split=split,
                           classes=names)  # fmt: skip
    if "/" in spec or os.sep in spec or spec.endswith(".json"):
        raise MochiError(f"dataset {spec!r}: no such file or directory")
    return DatasetSpec(spec, spec, "builtin")


def _voc_class_names(root: Path) -> tuple[str, ...]:
    for fname in ("class_names.txt", "labels.txt"):
        f = root / fname
        if f.is_file():
            names = [n.strip() for n in f.read_text().splitlines()]
            return tuple(n for n in names if n and n != "_background_")
    raise MochiError(
        f"VOC-layout dataset {root}: no class names; write them one a line to {root / 'class_names.txt'} "
        "or pass --classes a,b,c"
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
            "(voc_2007_trainval, voc_2012_trainval, voc_2007_test, coco_2017_train, coco_2017_val, ...), "
            "a COCO json (ANNOTATIONS.json[:IMAGE_ROOT]) or a VOC-layout directory (DIR[:SPLIT])"
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


# ------------------------------------------------------------------------------------------ the metrics


def metrics_from_results(results: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """Detectron2 evaluator output (``{"bbox": {"AP": ..}, "segm": {..}}``) → record metrics (percent).

    Only the metrics the results hold appear (VOC: AP, AP50, AP75; COCO with masks: also mask_*);
    a NaN (COCO's "no predictions") becomes ``None``.
    """
    out: dict[str, float | None] = {}
    for name, (task, key) in METRICS.items():
        value = results.get(task, {}).get(key)
        if value is not None:
            value = float(value)
            out[name] = value if math.isfinite(value) else None
    return out


def aggregate(per_seed: Sequence[Mapping[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per-seed metric dicts → ``{metric: {"mean", "std", "n", "values"}}``.

    ``std`` is the sample standard deviation (denominator ``n - 1``), ``None`` when ``n < 2``; seeds
    where a metric is ``None`` (no predictions) are left out of that metric's mean and counted in ``n``
    only if present.
    """
    names: dict[str, None] = {}
    for m in per_seed:
        names.update(dict.fromkeys(m))
    out = {}
    for name in names:
        values = [float(m[name]) for m in per_seed if m.get(name) is not None]
        n = len(values)
        mean = sum(values) / n if n else None
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else None
        out[name] = {"mean": mean, "std": std, "n": n, "values": values}
    return out


def format_aggregate(agg: Mapping[str, Mapping[str, Any]]) -> str:
    """``AP50 82.40 ± 0.20 (n=5)`` lines."""
    lines = []
    for name, a in agg.items():
        mean = "n/a" if a["mean"] is None else f"{a['mean']:.2f}"
        std = "" if a["std"] is None else f" ± {a['std']:.2f}"
        lines.append(f"{name:10s} {mean}{std} (n={a['n']})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- training


def _trainer_class():
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    class Trainer(DefaultTrainer):
        """DefaultTrainer with the evaluator chosen by the test set's type; evaluation runs once, after."""

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "")
            if kind == "pascal_voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            if kind == "coco":
                folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
                return COCOEvaluator(dataset_name, output_dir=folder)
            raise MochiError(f"test set {dataset_name!r}: no evaluator for evaluator_type {kind!r}")

        def build_hooks(self):
            # The evaluation is run by _train_seed after training (also after a resume of a finished run).
            return [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]

    return Trainer


def backbone_not_loaded(model, weights: Mapping[str, Any]) -> list[str]:
    """Backbone tensors of a Detectron2 ``model`` that do not hold the value of ``weights`` (a ``.pkl``'s
    ``model`` dict, Detectron2 ResNet names). Covers ``backbone.[bottom_up.]`` and the C4 ``roi_heads.res5``;
    the extra norm after res5 is new and not counted.
    """
    import re

    import numpy as np
    import torch

    pattern = re.compile(r"^(stem|res[2-5]\.\d+)\.")
    bad = []
    for key, value in model.state_dict().items():
        for prefix in ("backbone.bottom_up.", "backbone.", "roi_heads."):
            if key.startswith(prefix):
                name = key[len(prefix) :]
                break
        else:
            continue
        if not pattern.match(name):
            continue
        ref = weights.get(name)
        if ref is None or not torch.equal(value.cpu(), torch.as_tensor(np.asarray(ref))):
            bad.append(key)
    return bad


def _setup_logging(seed_dir: Path, verbose: bool) -> logging.Handler | None:
    import warnings

    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    # Expected from Detectron2 v0.6 on current torch; they say nothing about the run.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release")
    rank = comm.get_rank()
    for name in ("detectron2", "fvcore", "mochi"):
        logger = setup_logger(name=name, distributed_rank=rank, abbrev_name=name[:3])
        for h in logger.handlers:
            h.setLevel(logging.INFO if verbose else logging.WARNING)
    if rank != 0:
        return None
    handler = logging.FileHandler(seed_dir / "log.txt")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
    for name in ("detectron2", "fvcore", "mochi"):
        logging.getLogger(name).addHandler(handler)
    return handler


def _train_seed(cfg, datasets: Sequence[DatasetSpec], verbose: bool) -> None:
    """One process of one seed (run by Detectron2's ``launch``): train, evaluate, write ``eval.json``."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    import mochi.transfer.detectron2_head  # noqa: F401 - registration in spawned workers
    from mochi.safe_pickle import safe_load

    for ds in datasets:
        register_dataset(ds)
    seed_dir = Path(cfg.OUTPUT_DIR)
    handler = _setup_logging(seed_dir, verbose)
    try:
        # Different ranks draw different data: seed + rank, as Detectron2's default_setup does.
        seed_all_rng(cfg.SEED + comm.get_rank())
        Trainer = _trainer_class()
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=True)
        if trainer.start_iter == 0 and cfg.MODEL.WEIGHTS:
            weights = safe_load(cfg.MODEL.WEIGHTS)["model"]
            bad = backbone_not_loaded(trainer.checkpointer.model, weights)
            if bad:
                raise MochiError(
                    f"{len(bad)} backbone tensors of the detector did not load from {cfg.MODEL.WEIGHTS} "
                    f"(e.g. {bad[:3]}): does MODEL.RESNETS.DEPTH match the checkpoint's architecture?"
                )
        start, start_iter = time.perf_counter(), trainer.start_iter
        trainer.train()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        results = Trainer.test(cfg, trainer.model)
        eval_s = time.perf_counter() - start
        if comm.is_main_process():
            atomic_write_json(
                seed_dir / "eval.json",
                {"results": _plain(results), "start_iter": start_iter, "max_iter": cfg.SOLVER.MAX_ITER,
                 "train_s": train_s, "eval_s": eval_s},
            )  # fmt: skip
        comm.synchronize()
    finally:
        if handler is not None:
            for name in ("detectron2", "fvcore", "mochi"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def _plain(obj):
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return float(obj) if hasattr(obj, "__float__") and not isinstance(obj, (int, bool)) else obj


# ----------------------------------------------------------------------------------------------- driver


@dataclass
class DetectionRun:
    """What :func:`run_detection` did: per-seed records (in seed order), the aggregate and record paths."""

    seeds: list[dict[str, Any]]
    aggregate: dict[str, Any]
    written: list[Path] = field(default_factory=list)
    skipped_seeds: list[int] = field(default_factory=list)


def hyperparameters(cfg, *, norm: str, world_size: int, overrides: Sequence[str]) -> dict[str, Any]:
    """The cfg values that define the protocol (and can change a number), for the records."""
    keys = [
        "MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.DEPTH",
        "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.ROI_HEADS.NAME", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.MASK_ON",
        "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT", "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN",
        "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "SOLVER.MAX_ITER", "SOLVER.BASE_LR",
        "SOLVER.IMS_PER_BATCH", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS", "SOLVER.WEIGHT_DECAY",
        "SOLVER.MOMENTUM", "TEST.PRECISE_BN.ENABLED", *NORM_KEYS,
    ]  # fmt: skip
    out: dict[str, Any] = {}
    for key in keys:
        value = _get(cfg, key)
        out[key] = list(value) if isinstance(value, (list, tuple)) else value
    out["norm_choice"] = norm
    out["world_size"] = world_size
    out["overrides"] = list(overrides)
    return out


def build_config(
    config: str,
    *,
    weights: str,
    output_dir: str | Path,
    seed: int,
    world_size: int,
    device: str,
    norm: str = "auto",
    train: Sequence[DatasetSpec] = (),
    test: Sequence[DatasetSpec] = (),
    overrides: Sequence[str] = (),
):
    """The cfg of one seed: shipped config → ``KEY VALUE`` overrides → norm choice → data → run keys."""
    cfg = load_config(config)
    if len(overrides) % 2:
        raise MochiError(f"overrides must be KEY VALUE pairs; got an odd number: {' '.join(overrides)}")
    try:
        cfg.merge_from_list(list(overrides))
    except (KeyError, AssertionError, ValueError) as err:
        raise MochiError(f"bad override in {' '.join(overrides)}: {err}") from None
    for key, value in choose_norm({k: _get(cfg, k) for k in NORM_KEYS}, world_size, norm).items():
        _set(cfg, key, value)
    if train:
        cfg.DATASETS.TRAIN = tuple(d.name for d in train)
    if test:
        cfg.DATASETS.TEST = tuple(d.name for d in test)
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = device
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = int(seed)
    return cfg


def _dataset_specs(cfg_names: Sequence[str], given: Sequence[str], default_split: str, classes):
    if given:
        return [parse_dataset(s, default_split=default_split, classes=classes) for s in given]
    return [parse_dataset(s, default_split=default_split) for s in cfg_names]


def run_detection(
    checkpoint: str | os.PathLike,
    *,
    config: str,
    output: str | os.PathLike,
    seeds: Sequence[int] = (0,),
    results_dir: str | os.PathLike | None = None,
    train: Sequence[str] = (),
    test: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    norm: str = "auto",
    num_gpus: int | None = None,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    overrides: Sequence[str] = (),
    encoder: str | None = None,
    trust_checkpoint: bool = False,
    verbose: bool = True,
) -> DetectionRun:
    """Fine-tune and evaluate a detector from ``checkpoint`` once per seed; write the records.

    ``train`` / ``test``: dataset specs (see :func:`parse_dataset`), default: the config's
    ``DATASETS.TRAIN`` / ``DATASETS.TEST``. ``overrides``: Detectron2 ``KEY VALUE`` pairs applied after
    the config. ``num_gpus`` per machine (default: 1 with CUDA, else 0 = CPU). Every seed's finished
    record is kept: a second call with more seeds runs only the new ones and re-aggregates.
    """
    require_detectron2()
    import torch
    from detectron2.engine import launch

    from mochi.transfer.export import export_backbone

    if not seeds:
        raise MochiError("--seeds: give at least one seed")
    if num_gpus is None:
        num_gpus = 1 if torch.cuda.is_available() else 0
    if num_gpus > 0 and not torch.cuda.is_available():
        raise MochiError(f"--num-gpus {num_gpus}: CUDA is not available here; use --num-gpus 0 to run on CPU")
    world_size = max(num_gpus, 1) * num_machines
    device = "cuda" if num_gpus > 0 else "cpu"
    output = Path(output)
    results_dir = Path(results_dir) if results_dir is not None else output / "results"

    # Data first: missing data is an error before anything is converted or trained.
    if num_gpus == 0 and num_machines > 1:
        raise MochiError("--num-machines > 1 needs GPUs (Detectron2's launcher uses NCCL); pass --num-gpus")
    base = build_config(
        config, weights="", output_dir=output, seed=0, world_size=world_size, device=device, norm=norm,
        overrides=overrides,
    )  # fmt: skip
    train_ds = _dataset_specs(base.DATASETS.TRAIN, train, "trainval", classes)
    test_ds = _dataset_specs(base.DATASETS.TEST, test, "test", classes)
    if not train_ds or len(test_ds) != 1:
        raise MochiError(
            "give training data and exactly one test set (--train, --test); "
            f"got {len(train_ds)} and {len(test_ds)}"
        )
    class_lists = {}
    for ds in [*train_ds, *test_ds]:
        register_dataset(ds)
        class_lists[ds.spec] = check_dataset(ds)
    first = class_lists[train_ds[0].spec]
    differ = [s for s, c in class_lists.items() if c != first]
    if differ:
        raise MochiError(f"datasets {differ} have different classes from {train_ds[0].spec!r}: {first}")
    overrides = [*overrides] if "MODEL.ROI_HEADS.NUM_CLASSES" in overrides else [
        "MODEL.ROI_HEADS.NUM_CLASSES", str(len(first)), *overrides]  # fmt: skip

    output.mkdir(parents=True, exist_ok=True)
    weights = output / "backbone.pkl"
    report = export_backbone(
        checkpoint, weights, to="detectron2", encoder=encoder, trust_checkpoint=trust_checkpoint, force=True
    )
    evaluated = {
        "checkpoint": str(checkpoint), "sha256": report.sha256, "format": report.format, "arch": report.arch,
        "encoder": report.encoder, "prefix": report.prefix, "weights": str(weights),
    }  # fmt: skip
    data = {
        "dataset": "+".join(d.spec for d in train_ds) + " -> " + "+".join(d.spec for d in test_ds),
        "train": [d.spec for d in train_ds],
        "test": [d.spec for d in test_ds],
        "classes": first,
    }
    protocol = resolve_config(config).stem

    run = DetectionRun(seeds=[], aggregate={})
    for seed in seeds:
        seed_dir = output / f"seed{seed}"
        done = seed_dir / "record.json"
        if done.is_file():
            record = json.loads(done.read_text())
            run.skipped_seeds.append(seed)
        else:
            cfg = build_config(
                config, weights=weights, output_dir=seed_dir, seed=seed, world_size=world_size, device=device,
                norm=norm, train=train_ds, test=test_ds, overrides=overrides,
            )  # fmt: skip
            expected_depth = {"resnet50": 50, "resnet101": 101, "resnet152": 152}.get(report.arch)
            if expected_depth != cfg.MODEL.RESNETS.DEPTH:
                raise MochiError(
                    f"{checkpoint} holds a {report.arch} but the config builds a "
                    f"ResNet-{cfg.MODEL.RESNETS.DEPTH}"
                    + (f": add MODEL.RESNETS.DEPTH {expected_depth}" if expected_depth else "")
                )
            _check_same_config(seed_dir, cfg)
            start = time.perf_counter()
            launch(
                _train_seed, num_gpus_per_machine=max(num_gpus, 1), num_machines=num_machines,
                machine_rank=machine_rank, dist_url=dist_url, args=(cfg, [*train_ds, *test_ds], verbose),
            )  # fmt: skip
            if machine_rank != 0:
                continue  # rank-0's machine writes the records
            ev = json.loads((seed_dir / "eval.json").read_text())
            record = make_record(
                task="detection", protocol=protocol, evaluated=evaluated, data=data,
                hyperparameters=hyperparameters(cfg, norm=norm, world_size=world_size, overrides=overrides),
                metrics=metrics_from_results(ev["results"]), seed=seed,
                wall_time_s=round(time.perf_counter() - start, 2),
                extra={"detectron2_results": ev["results"], "output_dir": str(seed_dir),
                       "resumed_from_iter": ev["start_iter"]},
            )  # fmt: skip
            atomic_write_json(done, record)
        if not (results_dir / f"{record['id']}.json").exists():
            run.written.append(write_record(results_dir, record))
        run.seeds.append(record)
    if machine_rank != 0:
        return run
    run.aggregate = _aggregate_record(run.seeds, output, results_dir, run)
    return run


def _check_same_config(seed_dir: Path, cfg) -> None:
    """An existing seed directory resumes only under the same config; else a clear error."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    path = seed_dir / "config.yaml"
    text = cfg.dump()
    if path.is_file() and path.read_text() != text:
        raise MochiError(
            f"{seed_dir} holds a run with a different config ({path}); resume with the same options, "
            "or use a new --output"
        )
    if not path.is_file():
        atomic_write_text(path, text)


def _aggregate_record(seed_records, output: Path, results_dir: Path, run: DetectionRun) -> dict[str, Any]:
    ids = [r["id"] for r in seed_records]
    path = output / "aggregate.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("seed_record_ids") == ids:
            if not (results_dir / f"{previous['id']}.json").exists():
                run.written.append(write_record(results_dir, previous))
            return previous
    first = seed_records[0]
    record = make_record(
        task="detection-aggregate", protocol=first["protocol"], evaluated=first["evaluated"],
        data=first["data"], hyperparameters=first["hyperparameters"],
        metrics=aggregate([r["metrics"] for r in seed_records]),
        seed=None, wall_time_s=round(sum(r.get("wall_time_s") or 0 for r in seed_records), 2),
        extra={"seeds": [r["seed"] for r in seed_records], "seed_record_ids": ids,
               "std": "sample standard deviation (n - 1)"},
    )  # fmt: skip
    atomic_write_json(path, record)
    run.written.append(write_record(results_dir, record))
    return record
