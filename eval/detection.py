"""Detection / instance-segmentation transfer: fine-tune Detectron2 from a backbone, once per seed.

The runner contract of every evaluation: a config dataclass in, records out, one writer.

- :class:`DetectionConfig`: what ``mochi detect`` runs (validated on construction; errors name its fields);
- :func:`prepare_detection`: the checks and work shared by all seeds (data, checkpoint conversion);
- :func:`run_detection_seed`: one seed, trained and evaluated → that seed's record;
- :func:`aggregate_detection`: the seeds' records → the aggregate record;
- :func:`run_detection`: the driver (``mochi detect``): every unfinished seed, its record written as soon as
  it exists with :func:`mochi.eval.records.write_records`, then the aggregate.

The Detectron2 glue (configs, BN choice, datasets, the ExtraNorm head, the weight file) is in
:mod:`mochi.transfer.detectron2`; one seed's process (trainer, load check) in :mod:`.detection_trainer`;
the metric mapping and the aggregation in :mod:`.detection_metrics`.

Output layout (``output``)::

    backbone.pkl            the converted checkpoint (MODEL.WEIGHTS of every seed)
    seed<k>/                Detectron2's OUTPUT_DIR: checkpoints, metrics.json, log.txt, config.yaml
    seed<k>/record.json     the seed's resume state once evaluated (a copy of its record): never rerun
    aggregate.json          the resume state of the aggregate last made (a copy of its record)
    results/                every record, one file each (``results_dir``)

An interrupted seed resumes from its last Detectron2 checkpoint (``resume_or_load(resume=True)``);
the data order and augmentation after a resume follow the seed again from the resumed iteration,
so a resumed run is not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mochi.errors import ConfigError, MochiError
from mochi.io import atomic_write_json, atomic_write_text
from mochi.transfer.detectron2.config import (
    NORM_CHOICES,
    build_config,
    check_depth,
    hyperparameters,
    resolve_config,
)
from mochi.transfer.detectron2.datasets import DatasetSpec, dataset_specs, shared_classes
from mochi.transfer.detectron2.install import require_detectron2

from .detection_metrics import aggregate, metrics_from_results
from .records import make_record, write_records


@dataclass
class DetectionConfig:
    """One ``mochi detect`` run: fine-tune and evaluate a detector from ``checkpoint`` once per seed."""

    checkpoint: str | os.PathLike
    config: str  # a shipped config name (voc07_R50_C4_24k, ...) or a Detectron2 yaml file
    output: str | os.PathLike  # the run directory (layout in the module docstring)
    seeds: Sequence[int] = (0,)  # distinct; one fine-tune each
    results_dir: str | os.PathLike | None = None  # where records go; default: output/results
    # Datasets (see mochi.transfer.detectron2.datasets), default: the config's DATASETS.TRAIN / TEST.
    train: Sequence[str] = ()
    test: Sequence[str] = ()
    classes: Sequence[str] | None = None  # class names of VOC-layout datasets (default: class_names.txt)
    norm: str = "auto"  # see mochi.transfer.detectron2.config.choose_norm
    num_gpus: int | None = None  # per machine; default: 1 with CUDA, else 0 = CPU
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"  # tcp://HOST:PORT of machine 0 when num_machines > 1
    overrides: Sequence[str] = ()  # Detectron2 KEY VALUE pairs applied after the config
    encoder: str | None = None  # which encoder of the checkpoint (default: query)
    trust_checkpoint: bool = False  # allow arbitrary unpickling of a trusted checkpoint
    verbose: bool = True  # Detectron2's INFO lines on the console (else warnings only)

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        self.train = (self.train,) if isinstance(self.train, str) else tuple(self.train)
        self.test = (self.test,) if isinstance(self.test, str) else tuple(self.test)
        self.classes = tuple(self.classes) if self.classes else None
        self.overrides = tuple(self.overrides)
        if not self.seeds:
            raise ConfigError("seeds", "seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"seeds {list(self.seeds)}: give distinct seeds, e.g. 0,1,2,3,4")
        if self.norm not in NORM_CHOICES:
            raise ConfigError("norm", f"norm {self.norm!r}: choose one of {', '.join(NORM_CHOICES)}")


@dataclass
class DetectionPlan:
    """What every seed of a :class:`DetectionConfig` shares, made once by :func:`prepare_detection`."""

    num_gpus: int
    world_size: int
    device: str
    train: list[DatasetSpec]
    test: list[DatasetSpec]
    overrides: list[str]  # the config's, with MODEL.ROI_HEADS.NUM_CLASSES from the data
    weights: Path  # the converted backbone (.pkl)
    arch: str | None
    evaluated: dict[str, Any]  # a record's "evaluated"
    data: dict[str, Any]  # a record's "data"
    protocol: str


@dataclass
class DetectionRun:
    """What :func:`run_detection` did: per-seed records (in seed order), the aggregate and record paths."""

    seeds: list[dict[str, Any]]
    aggregate: dict[str, Any]
    written: list[Path] = field(default_factory=list)
    skipped_seeds: list[int] = field(default_factory=list)


def prepare_detection(config: DetectionConfig) -> DetectionPlan:
    """Check the data (before anything is converted or trained), then convert the checkpoint once."""
    require_detectron2()
    import torch

    from mochi.transfer.export import export_backbone

    num_gpus = config.num_gpus
    if num_gpus is None:
        num_gpus = 1 if torch.cuda.is_available() else 0
    if num_gpus > 0 and not torch.cuda.is_available():
        raise ConfigError(
            "num_gpus", f"num_gpus {num_gpus}: CUDA is not available here; use num_gpus 0 to run on CPU"
        )
    if num_gpus == 0 and config.num_machines > 1:
        raise ConfigError(
            "num_machines", "num_machines > 1 needs GPUs (Detectron2's launcher uses NCCL); pass num_gpus"
        )
    world_size = max(num_gpus, 1) * config.num_machines
    device = "cuda" if num_gpus > 0 else "cpu"
    output = Path(config.output)

    # Data first: missing data is an error before anything is converted or trained.
    base = build_config(
        config.config, weights="", output_dir=output, seed=0, world_size=world_size, device=device,
        norm=config.norm, overrides=config.overrides,
    )  # fmt: skip
    train = dataset_specs(config.train, base.DATASETS.TRAIN, default_split="trainval", classes=config.classes)
    test = dataset_specs(config.test, base.DATASETS.TEST, default_split="test", classes=config.classes)
    if not train:
        raise ConfigError("train", "train: no training data; give some, or DATASETS.TRAIN in the config")
    if len(test) != 1:
        raise ConfigError("test", f"test: give exactly one test set; got {len(test)}")
    classes = shared_classes([*train, *test])
    overrides = list(config.overrides)
    if "MODEL.ROI_HEADS.NUM_CLASSES" not in overrides:
        overrides = ["MODEL.ROI_HEADS.NUM_CLASSES", str(len(classes)), *overrides]

    output.mkdir(parents=True, exist_ok=True)
    weights = output / "backbone.pkl"
    report = export_backbone(
        config.checkpoint, weights, to="detectron2", encoder=config.encoder,
        trust_checkpoint=config.trust_checkpoint, force=True,
    )  # fmt: skip
    evaluated = {
        "checkpoint": str(config.checkpoint), "sha256": report.sha256, "format": report.format,
        "arch": report.arch, "encoder": report.encoder, "prefix": report.prefix, "weights": str(weights),
    }  # fmt: skip
    data = {
        "dataset": "+".join(d.spec for d in train) + " -> " + "+".join(d.spec for d in test),
        "train": [d.spec for d in train],
        "test": [d.spec for d in test],
        "classes": classes,
    }
    return DetectionPlan(
        num_gpus=num_gpus, world_size=world_size, device=device, train=train, test=test,
        overrides=overrides, weights=weights, arch=report.arch, evaluated=evaluated, data=data,
        protocol=resolve_config(config.config).stem,
    )  # fmt: skip


def run_detection_seed(
    config: DetectionConfig, seed: int, plan: DetectionPlan | None = None
) -> dict[str, Any] | None:
    """Train and evaluate ``seed`` (resuming its Detectron2 checkpoint if any) → the seed's record.

    ``plan``: from :func:`prepare_detection` (made here when not given). Writes nothing but the seed's
    Detectron2 output directory; ``None`` on a machine other than rank 0 (which alone makes records).
    """
    plan = plan or prepare_detection(config)  # first: says how to install Detectron2 if it is missing
    from detectron2.engine import launch

    from .detection_trainer import train_seed

    seed_dir = Path(config.output) / f"seed{seed}"
    cfg = build_config(
        config.config, weights=plan.weights, output_dir=seed_dir, seed=seed, world_size=plan.world_size,
        device=plan.device, norm=config.norm, train=plan.train, test=plan.test, overrides=plan.overrides,
    )  # fmt: skip
    check_depth(cfg, plan.arch, str(config.checkpoint))
    _check_same_config(seed_dir, cfg, config.output)
    start = time.perf_counter()
    launch(
        train_seed, num_gpus_per_machine=max(plan.num_gpus, 1), num_machines=config.num_machines,
        machine_rank=config.machine_rank, dist_url=config.dist_url,
        args=(cfg, [*plan.train, *plan.test], config.verbose),
    )  # fmt: skip
    if config.machine_rank != 0:
        return None
    ev = json.loads((seed_dir / "eval.json").read_text())
    return make_record(
        task="detection", protocol=plan.protocol, evaluated=plan.evaluated, data=plan.data,
        hyperparameters=hyperparameters(cfg, norm=config.norm, world_size=plan.world_size,
                                        overrides=plan.overrides),
        metrics=metrics_from_results(ev["results"]), seed=seed,
        wall_time_s=round(time.perf_counter() - start, 2),
        extra={"detectron2_results": ev["results"], "output_dir": str(seed_dir),
               "resumed_from_iter": ev["start_iter"]},
    )  # fmt: skip


def aggregate_detection(seed_records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The aggregate record of ``seed_records`` (one protocol, checkpoint and data; in seed order):
    per metric mean, sample std, n and values (:func:`~mochi.eval.detection_metrics.aggregate`)."""
    if not seed_records:
        raise MochiError("no seed records to aggregate")
    first = seed_records[0]
    return make_record(
        task="detection-aggregate", protocol=first["protocol"], evaluated=first["evaluated"],
        data=first["data"], hyperparameters=first["hyperparameters"],
        metrics=aggregate([r["metrics"] for r in seed_records]),
        seed=None, wall_time_s=round(sum(r.get("wall_time_s") or 0 for r in seed_records), 2),
        extra={"seeds": [r["seed"] for r in seed_records], "seed_record_ids": [r["id"] for r in seed_records],
               "std": "sample standard deviation (n - 1)"},
    )  # fmt: skip


def run_detection(config: DetectionConfig) -> DetectionRun:
    """Every seed of ``config`` not finished yet, each record written as soon as it exists; the aggregate.

    A finished seed (``seed<k>/record.json``) is not rerun: a second call with more seeds runs only the new
    ones and re-aggregates. A record missing from ``results_dir`` (another results directory, a deleted
    file) is written there again, under its own id.
    """
    plan = prepare_detection(config)
    output = Path(config.output)
    results_dir = Path(config.results_dir) if config.results_dir is not None else output / "results"
    run = DetectionRun(seeds=[], aggregate={})
    for seed in config.seeds:
        done = output / f"seed{seed}" / "record.json"
        if done.is_file():
            record = json.loads(done.read_text())
            run.skipped_seeds.append(seed)
        else:
            record = run_detection_seed(config, seed, plan)
            if record is None:
                continue  # rank 0's machine writes the records
            atomic_write_json(done, record)
        run.written += _write_once(results_dir, record)
        run.seeds.append(record)
    if config.machine_rank != 0:
        return run
    ids = [r["id"] for r in run.seeds]
    path = output / "aggregate.json"
    previous = json.loads(path.read_text()) if path.is_file() else None
    if previous is not None and previous.get("seed_record_ids") == ids:
        run.aggregate = previous
    else:
        run.aggregate = aggregate_detection(run.seeds)
        atomic_write_json(path, run.aggregate)
    run.written += _write_once(results_dir, run.aggregate)
    return run


def _write_once(results_dir: Path, record: dict[str, Any]) -> list[Path]:
    """Write ``record`` into ``results_dir`` unless a file of its id is there already."""
    if (results_dir / f"{record['id']}.json").exists():
        return []
    return write_records(results_dir, [record])


def _check_same_config(seed_dir: Path, cfg, output: str | os.PathLike) -> None:
    """An existing seed directory resumes only under the same config; else a clear error."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    path = seed_dir / "config.yaml"
    text = cfg.dump()
    if path.is_file() and path.read_text() != text:
        raise ConfigError(
            "output",
            f"output {output}: {seed_dir.name} holds a run with a different config ({path}); resume with "
            "the same options, or use a new output directory",
        )
    if not path.is_file():
        atomic_write_text(path, text)
