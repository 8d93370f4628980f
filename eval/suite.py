"""``mochi suite``: a named set of evaluations (:mod:`mochi.eval.suites`) on each of several backbones.

Every evaluation of the plan is one (backbone, step, seed). Its *request* — the backbone's identity
(checkpoint sha256, encoder, prefix; or a random-init architecture), the data asked for, the step's protocol
and options, and the seed — is hashed into ``record["suite"]["request"]``. A record is written as soon as
its evaluation finishes, so a suite stopped part way (killed, out of time) is resumed by running the same
command again: evaluations whose request already has a record in the results folder are skipped, the
others run. Feature passes are shared through the feature cache: each backbone's features are extracted
once and every protocol reads them.

Everything is checked before the first evaluation: the suite, options, every checkpoint (read and hashed),
and the data (both splits opened).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mochi.errors import ConfigError, MochiError

from .config import CONFIGS, BackboneSpec, EvalData, KnnConfig, check_backbone
from .records import load_records, write_records
from .suites import Step, Suite, get_suite, suite_steps


@dataclass
class SuiteConfig:
    """What ``mochi suite`` runs. ``checkpoints``: files any :mod:`mochi.transfer` reader accepts;
    ``baselines``: architectures evaluated at random init, or ``pixels`` (the raw pixels).
    ``init_seeds``: the initialisation seeds of each random-init baseline (one backbone per seed; the
    table pools them into one row, mean ± std). ``seeds``: default the suite's.
    ``options``: ``STEP.FIELD=VALUE`` overrides of a step's protocol config (``linear-sgd-grid.epochs=5``).
    """

    checkpoints: Sequence[str]
    suite: str
    output: str | os.PathLike
    baselines: Sequence[str] = ()
    seeds: Sequence[int] | None = None
    init_seeds: Sequence[int] = (0,)
    variant: str | None = None
    options: Sequence[str] = ()
    data: str | None = None  # overrides the suite's dataset (e.g. full fashion-mnist from --data-root)
    data_root: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    image_size: int | None = None
    batch_size: int = 256
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    cache_dir: str | None = None
    encoder: str | None = None
    trust_checkpoint: bool = False
    num_gpus: int | None = None  # detection: GPUs per machine
    progress: bool = True


@dataclass
class Planned:
    """One evaluation of the plan and its request (see the module docstring)."""

    backbone: int  # index into SuitePlan.backbones
    step: Step
    seed: int | None
    request: dict[str, Any]
    key: str = ""

    def __post_init__(self) -> None:
        text = json.dumps(self.request, sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SuitePlan:
    suite: Suite
    backbones: list[BackboneSpec]
    identities: list[dict[str, Any]]
    labels: list[str]
    data: EvalData | None
    evaluations: list[Planned]
    results_dir: Path
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_options(options: Sequence[str], steps: Sequence[Step]) -> dict[str, dict[str, Any]]:
    """``["linear-sgd-grid.epochs=5", ...]`` -> ``{"linear-sgd-grid": {"epochs": 5}}``, checked against the
    step's config fields; values are JSON (``5``, ``0.1``, ``[1,2]``) or else plain strings."""
    by_name = {s.name: s for s in steps}
    out: dict[str, dict[str, Any]] = {}
    for text in options:
        head, eq, value = text.partition("=")
        step_name, dot, name = head.partition(".")
        if not eq or not dot:
            raise ConfigError("options", f"{text!r}: write STEP.FIELD=VALUE, e.g. linear-lbfgs.patience=5")
        if step_name not in by_name:
            raise ConfigError("options", f"{text!r}: no step {step_name!r} here; steps: {', '.join(by_name)}")
        names = {f.name for f in dataclasses.fields(_config_class(by_name[step_name]))} - {"seed"}
        if name not in names:
            raise ConfigError(
                "options", f"{text!r}: {step_name} has no field {name!r}; fields: {', '.join(sorted(names))}"
            )
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(step_name, {})[name] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def _config_class(step: Step) -> type:
    if step.task == "knn":
        return KnnConfig
    if step.task == "linear":
        return CONFIGS[step.protocol]
    from .detection import DetectionConfig

    return DetectionConfig


def _step_config(step: Step, options: dict[str, Any], seed: int | None) -> Any:
    cls = _config_class(step)
    values = {**step.options, **options}
    if step.task == "linear":
        values["seed"] = seed
    try:
        return cls(**values) if step.task != "detection" else values
    except (TypeError, ValueError) as err:
        raise ConfigError("options", f"do not fit step {step.name}: {err}") from None


def _check_step(config: Any, step: Step) -> None:
    from .config import check_knn, check_linear

    try:
        if step.task == "knn":
            check_knn(config)
        elif step.task == "linear":
            check_linear(config)
    except ConfigError as err:
        raise ConfigError("options", f"{step.name}.{err.field} {err.message}") from None


def _eval_data(cfg: SuiteConfig, suite: Suite) -> EvalData | None:
    if all(s.task == "detection" for s in suite.steps):
        if cfg.data_root is not None or cfg.data is not None:
            raise ConfigError(
                "data_root" if cfg.data_root is not None else "data",
                f"does not apply to suite {suite.name}: it reads Detectron2's builtin datasets; "
                "point DETECTRON2_DATASETS at the folder holding VOC20xx/ or coco/ instead",
            )
        return None
    values = dict(suite.data)
    if cfg.data is not None:
        values["data"] = cfg.data
    if cfg.image_size is not None:
        values["image_size"] = cfg.image_size
    if suite.needs_root and cfg.data is None:
        if cfg.data_root is None:
            raise ConfigError(
                "data_root", f"is required by suite {suite.name}: the folder holding its train/ and val/"
            )
        values["data"] = cfg.data_root
    return EvalData(
        **values, data_root=cfg.data_root if cfg.data is not None else None, limit_train=cfg.limit_train,
        limit_test=cfg.limit_test, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
        amp=cfg.amp, cache_dir=cfg.cache_dir, progress=cfg.progress,
    )  # fmt: skip


def _data_request(data: EvalData | None) -> dict[str, Any] | None:
    """The data asked for, without where it lies or how it is read (folder, batch size, device)."""
    if data is None:
        return None
    keep = ("subset", "train_split", "test_split", "limit_train", "limit_test", "image_size", "crop_fraction")
    name = data.data if data.data_root is None and not Path(data.data).exists() else Path(data.data).name
    return {"data": name, **{k: getattr(data, k) for k in keep}, "dtype": data.dtype}


def _check_backbones(cfg: SuiteConfig) -> tuple[list[BackboneSpec], list[dict[str, Any]], list[str]]:
    """Read and hash every checkpoint (a bad one stops the suite before any work)."""
    from mochi.transfer.backbone import inspect_checkpoint

    specs, identities, labels = [], [], []
    for path in cfg.checkpoints:
        if not Path(path).is_file():
            raise MochiError(f"checkpoint not found: {path}; give existing checkpoint files")
        _, _, report = inspect_checkpoint(path, encoder=cfg.encoder, trust_checkpoint=cfg.trust_checkpoint)
        specs.append(
            BackboneSpec(checkpoint=str(path), encoder=cfg.encoder, trust_checkpoint=cfg.trust_checkpoint)
        )
        identities.append({"sha256": report.sha256, "encoder": report.encoder, "prefix": report.prefix})
        labels.append(str(path))
    for arch in cfg.baselines:
        if arch == "pixels":  # the raw-pixel baseline
            specs.append(BackboneSpec(pixels=True))
            identities.append({"pixels": True})
            labels.append("raw pixels")
            continue
        for init_seed in cfg.init_seeds:
            spec = BackboneSpec(random_init=True, arch=arch, init_seed=init_seed)
            check_backbone(spec)
            specs.append(spec)
            identities.append({"random_init": arch, "init_seed": init_seed})
            labels.append(
                f"random-init {arch}" + (f" (init seed {init_seed})" if len(cfg.init_seeds) > 1 else "")
            )
    if not specs:
        raise ConfigError("checkpoints", "missing: give at least one checkpoint, or --baseline ARCH")
    return specs, identities, labels


def plan_suite(cfg: SuiteConfig) -> SuitePlan:
    """Check everything and list the evaluations (nothing runs)."""
    suite = get_suite(cfg.suite)
    steps = suite_steps(suite, cfg.variant)
    options = parse_options(cfg.options, steps)
    seeds = tuple(cfg.seeds) if cfg.seeds is not None else suite.seeds
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"{list(seeds)}: give distinct seeds, e.g. 0,1,2")
    for step in steps:  # impossible option values stop here, before any checkpoint is read
        _check_step(_step_config(step, options.get(step.name, {}), seeds[0]), step)
    init_seeds = tuple(cfg.init_seeds)
    if not init_seeds or len(set(init_seeds)) != len(init_seeds) or min(init_seeds) < 0:
        raise ConfigError(
            "init_seeds", f"{','.join(map(str, init_seeds))}: give distinct seeds >= 0, e.g. 0,1,2"
        )
    if init_seeds != (0,) and not any(b != "pixels" for b in cfg.baselines):
        raise ConfigError("init_seeds", "applies to random-init baselines: add --baseline ARCH, or drop it")
    if any(s.task == "detection" for s in steps) and cfg.baselines:
        raise ConfigError("baselines", "is not available for detection suites: they take checkpoints only")
    if "pixels" in cfg.baselines and any(s.protocol == "moco" for s in steps):
        raise ConfigError(
            "baselines", "pixels: this suite's moco linear protocol needs a network; drop --baseline pixels"
        )
    data = _eval_data(cfg, dataclasses.replace(suite, steps=steps))
    if data is not None:
        _check_data(data)
    specs, identities, labels = _check_backbones(cfg)
    evaluations = []
    for i in range(len(specs)):
        for step in steps:
            for seed in seeds if step.seeded else (None,):
                request = {
                    "suite": suite.name, "step": step.name, "task": step.task, "protocol": step.protocol,
                    "options": _jsonable({**step.options, **options.get(step.name, {})}),
                    "backbone": identities[i], "data": _data_request(data), "seed": seed,
                }  # fmt: skip
                evaluations.append(Planned(i, step, seed, request))
    return SuitePlan(
        suite, specs, identities, labels, data, evaluations, Path(cfg.output) / "results", options
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _check_data(data: EvalData) -> None:
    """Open both splits (files, classes, limits) so that missing data fails before any checkpoint loads."""
    from .config import check_data
    from .data import open_split

    check_data(data)
    for split, limit in ((data.train_split, data.limit_train), (data.test_split, data.limit_test)):
        open_split(data.data, split, root=data.data_root, subset=data.subset, transform=None, limit=limit)


def done_requests(results_dir: Path) -> set[str]:
    """Request keys that already have a record in ``results_dir``."""
    if not results_dir.is_dir():
        return set()
    return {r["suite"]["request"] for r in load_records(results_dir) if isinstance(r.get("suite"), dict)}


def run_suite(cfg: SuiteConfig, on_event: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every evaluation of the plan not done yet; returns ``{"ran": [...], "skipped": [...], "records"}``
    (request keys, and every record of this plan in the results folder)."""
    say = on_event or (lambda text: None)
    plan = plan_suite(cfg)
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    done = done_requests(plan.results_dir)
    todo = [p for p in plan.evaluations if p.key not in done]
    skipped = [p.key for p in plan.evaluations if p.key in done]
    say(f"suite {plan.suite.name}: {len(plan.evaluations)} evaluations, {len(skipped)} already done")
    ran = []
    for index in sorted({p.backbone for p in todo}):
        work = [p for p in todo if p.backbone == index]
        backbone = plan.backbones[index].load() if plan.data is not None else None
        for p in work:
            say(f"[{len(ran) + len(skipped) + 1}/{len(plan.evaluations)}] {plan.labels[index]}: {p.step.name}"
                + ("" if p.seed is None else f" seed {p.seed}"))  # fmt: skip
            records = _run_one(cfg, plan, p, backbone)
            for record in records:
                record["suite"] = {"name": plan.suite.name, "step": p.step.name, "request": p.key}
            write_records(plan.results_dir, records)
            ran.append(p.key)
    keys = {p.key for p in plan.evaluations}
    mine = [r for r in load_records(plan.results_dir) if r.get("suite", {}).get("request") in keys]
    outputs, text = write_tables(mine, Path(cfg.output))
    return {"ran": ran, "skipped": skipped, "records": mine, "plan": plan, "outputs": outputs, "table": text}


def write_tables(records: Sequence[dict[str, Any]], folder: Path) -> tuple[list[Path], str]:
    """The suite's table from ``records`` as ``table.{md,csv,tex,json}`` in ``folder``, and its pictures in
    ``folder/plots`` (table columns as dot plots; kNN top-1 against k); returns the paths and the Markdown."""
    from mochi.io import atomic_write_text

    from .table_formats import render
    from .tables import build_table

    table = build_table(records)
    paths, text = _plots(records, table, folder), ""
    for fmt, suffix in (("md", "md"), ("csv", "csv"), ("latex", "tex"), ("json", "json")):
        rendered = render(table, fmt, 1)
        path = folder / f"table.{suffix}"
        atomic_write_text(path, rendered)
        paths.append(path)
        text = text or rendered
    return paths, text


def _run_one(cfg: SuiteConfig, plan: SuitePlan, p: Planned, backbone) -> list[dict[str, Any]]:
    from .evaluate import evaluate_knn, evaluate_linear

    config = _step_config(p.step, plan.options.get(p.step.name, {}), p.seed)
    if p.step.task == "knn":
        return evaluate_knn(backbone, plan.data, config)
    if p.step.task == "linear":
        return evaluate_linear(backbone, plan.data, config)
    return _run_detection(cfg, plan, p, config)


def _run_detection(cfg: SuiteConfig, plan: SuitePlan, p: Planned, values: dict[str, Any]) -> list[dict]:
    """One detection seed, through the detection driver (its run folder resumes a killed fine-tune)."""
    from .detection import DetectionConfig, prepare_detection, run_detection_seed

    spec = plan.backbones[p.backbone]
    ident = plan.identities[p.backbone]
    out = Path(cfg.output) / "detection" / p.step.name / ident["sha256"][:12]
    config = DetectionConfig(
        checkpoint=spec.checkpoint, output=out, seeds=(p.seed,), encoder=cfg.encoder,
        trust_checkpoint=cfg.trust_checkpoint, num_gpus=cfg.num_gpus, verbose=False, **values,
    )  # fmt: skip
    record = run_detection_seed(config, p.seed, prepare_detection(config))
    return [record] if record is not None else []


def _plots(records: Sequence[dict[str, Any]], table, folder: Path) -> list[Path]:
    from .plots import knn_curve, save_figure, table_dots

    paths = []
    if table.columns:
        paths += save_figure(table_dots(table), folder / "plots" / "table", ("png", "svg"))
    knn = [r for r in records if r["task"] == "knn"]
    if knn:
        paths += save_figure(knn_curve(knn), folder / "plots" / "knn", ("png", "svg"))
    return paths
