"""Detection transfer: metrics, aggregation, the runner contract, and real CPU fine-tunes with Detectron2.

The Detectron2 glue (configs, norm choice, datasets) is tested in ``test_transfer_detectron2_config.py``.

The real-photo tests use the labelme example datasets cached by ``scripts/fetch_detection_testdata.py``
(run by ``scripts/setup.sh``); they skip with that command as the reason when the cache is absent.
"""

import json
import logging
import math
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mochi import layout
from mochi.cli import main
from mochi.errors import ConfigError, MochiError
from mochi.eval.detection import DetectionConfig
from mochi.eval.detection_metrics import aggregate, metrics_from_results
from mochi.transfer import build_torchvision_resnet
from mochi.transfer.detectron2 import parse_dataset, require_detectron2

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("MOCHI_TESTDATA", ROOT / ".cache" / "testdata")) / "labelme-6.3.1"
FETCH = "python scripts/fetch_detection_testdata.py"


def _needs_detectron2():
    pytest.importorskip(
        "detectron2", reason="Detectron2 not installed; install it with scripts/install_detectron2.sh"
    )


def _needs_testdata():
    if not (TESTDATA / "SOURCE.txt").is_file():
        pytest.skip(f"real-photo detection test data absent; fetch it with `{FETCH}` (needs PyPI)")


# --------------------------------------------------------------------------- pure parts, no Detectron2


def test_aggregate_is_mean_and_sample_std():
    agg = aggregate([{"AP50": 80.0, "AP": 50.0}, {"AP50": 82.0, "AP": 52.0}, {"AP50": 84.0, "AP": None}])
    assert agg["AP50"] == {"mean": 82.0, "std": 2.0, "n": 3, "values": [80.0, 82.0, 84.0]}  # n-1: std 2
    assert agg["AP"]["n"] == 2 and agg["AP"]["mean"] == 51.0 and math.isclose(agg["AP"]["std"], math.sqrt(2))
    assert aggregate([{"AP": 1.0}])["AP"]["std"] is None


def test_metrics_from_results():
    res = {"bbox": {"AP": 50.0, "AP50": 80.0, "AP75": 55.0, "APs": 1.0}, "segm": {"AP": float("nan")}}
    assert metrics_from_results(res) == {"AP": 50.0, "AP50": 80.0, "AP75": 55.0, "mask_AP": None}


def test_detect_without_detectron2_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import fails as if absent
    with pytest.raises(MochiError, match="scripts/install_detectron2.sh"):
        require_detectron2()
    torch.save({}, tmp_path / "c.pth")
    out = CliRunner().invoke(main, ["detect", str(tmp_path / "c.pth"), "--config", "smoke_R50_C4", "-o", "x"])
    assert out.exit_code == 1 and "install_detectron2.sh" in out.output and "Traceback" not in out.output


def test_config_errors_name_fields_and_the_cli_names_flags(tmp_path):
    with pytest.raises(ConfigError, match=r"^seeds \[0, 0\]: give distinct seeds") as info:
        DetectionConfig("c.pth", config="smoke_R50_C4", output="x", seeds=[0, 0])
    assert info.value.field == "seeds" and str(info.value) == info.value.message
    with pytest.raises(ConfigError, match="^seeds: give at least one seed"):
        DetectionConfig("c.pth", config="smoke_R50_C4", output="x", seeds=[])
    with pytest.raises(ConfigError, match="^norm 'GN': choose one of") as info:
        DetectionConfig("c.pth", config="smoke_R50_C4", output="x", norm="GN")
    assert info.value.field == "norm"
    torch.save({}, tmp_path / "c.pth")
    args = ["detect", str(tmp_path / "c.pth"), "--config", "smoke_R50_C4", "-o", str(tmp_path / "o")]
    out = CliRunner().invoke(main, [*args, "--seeds", "1,0,1"])
    assert out.exit_code == 1 and "Error: --seeds [1, 0, 1]: give distinct seeds" in out.output, out.output


@pytest.mark.detectron2
def test_cli_names_the_flags_of_library_errors(tmp_path):
    _needs_detectron2()
    torch.save({}, tmp_path / "c.pth")
    args = ["detect", str(tmp_path / "c.pth"), "-o", str(tmp_path / "o"), "--num-gpus", "0"]
    out = CliRunner().invoke(main, [*args, "--config", "nope"])
    assert out.exit_code == 1 and "Error: --config 'nope': neither a shipped config" in out.output, out.output
    out = CliRunner().invoke(main, [*args, "--config", "smoke_R50_C4", "--num-machines", "2"])
    assert (
        "Error: --num-machines > 1 needs GPUs (Detectron2's launcher uses NCCL); pass --num-gpus"
        in out.output
    )
    out = CliRunner().invoke(main, [*args, "--config", "smoke_R50_C4", "SOLVER.MAX_ITER"])
    assert "Error: OVERRIDES must be KEY VALUE pairs; got an odd number: SOLVER.MAX_ITER" in out.output
    if not torch.cuda.is_available():
        out = CliRunner().invoke(main, [*args[:-2], "--config", "smoke_R50_C4", "--num-gpus", "1"])
        assert "Error: --num-gpus 1: CUDA is not available here; use --num-gpus 0 to run on CPU" in out.output


def _global_state() -> dict:
    """What a runner must leave as it found it: warning filters, logging set-up, global RNGs, environment.

    Loggers still in their default state (made by ``getLogger`` during a run) do not count.
    """
    loggers = {"": logging.getLogger(), **logging.Logger.manager.loggerDict}
    described = {
        name: (lg.level, lg.propagate, lg.disabled, tuple(lg.handlers))
        for name, lg in loggers.items()
        if isinstance(lg, logging.Logger)
    }
    described = {n: d for n, d in described.items() if n == "" or d != (0, True, False, ())}
    return {
        "warnings": list(warnings.filters),
        "logging.disable": logging.root.manager.disable,
        "loggers": described,
        "handler levels": {n: [h.level for h in d[3]] for n, d in described.items()},
        "random": random.getstate(),
        "numpy": np.random.get_state()[1].tobytes(),
        "torch": torch.get_rng_state().numpy().tobytes(),
        "environ": dict(os.environ),
    }


@pytest.mark.detectron2
def test_seed_process_state_is_put_back(tmp_path):
    _needs_detectron2()
    from mochi.eval.detection_trainer import preserved_rng, quiet_warnings, seed_logging

    before = _global_state()
    with pytest.raises(RuntimeError), preserved_rng(), quiet_warnings(), seed_logging(tmp_path, 0, False):
        assert _global_state() != before
        logging.getLogger("detectron2.engine").info("written to log.txt only")
        torch.manual_seed(1), np.random.seed(1), random.seed(1)
        os.environ["PYTHONHASHSEED"] = "1"
        raise RuntimeError("a failing seed")
    assert _global_state() == before
    assert "written to log.txt only" in (tmp_path / "log.txt").read_text()


# ----------------------------------------------------------------------------------- with Detectron2


@pytest.fixture(scope="module")
def mochi_r50(tmp_path_factory):
    """A mochi pretraining checkpoint (reference MoCo layout) holding a random ResNet-50."""
    torch.manual_seed(0)
    r50 = {
        k: v for k, v in build_torchvision_resnet("resnet50").state_dict().items() if not k.startswith("fc.")
    }
    mlp = {"fc.0.weight": torch.randn(2048, 2048), "fc.2.weight": torch.randn(128, 2048)}
    path = tmp_path_factory.mktemp("ckpt") / "mochi_r50.pth"
    sd = {f"module.encoder_q.{k}": v for k, v in {**r50, **mlp}.items()}
    meta = {"format_version": layout.FORMAT_VERSION, "config": {"arch": "resnet50", "small_stem": False}}
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": sd, "mochi": meta}, path)
    return path, r50


@pytest.mark.detectron2
def test_missing_builtin_data_is_an_error_before_training(mochi_r50, tmp_path, monkeypatch):
    _needs_detectron2()
    from detectron2.data import MetadataCatalog

    from mochi.eval.detection import run_detection

    if Path(MetadataCatalog.get("voc_2007_trainval").dirname).exists():
        pytest.skip("VOC2007 is present under DETECTRON2_DATASETS here; this test needs it absent")
    with pytest.raises(MochiError, match=r"voc_2007_trainval.*missing.*DETECTRON2_DATASETS"):
        run_detection(
            DetectionConfig(mochi_r50[0], config="voc07_R50_C4_24k", output=tmp_path / "o", num_gpus=0)
        )
    assert not (tmp_path / "o" / "backbone.pkl").exists()  # nothing converted or trained


@pytest.mark.detectron2
@pytest.mark.slow
def test_exported_backbone_loads_into_the_detector(mochi_r50, tmp_path):
    _needs_detectron2()
    _needs_testdata()
    from mochi.eval.detection_trainer import backbone_not_loaded, trainer_class
    from mochi.safe_pickle import safe_load
    from mochi.transfer import export_backbone
    from mochi.transfer.detectron2 import build_config, check_dataset, register_dataset

    path, r50 = mochi_r50
    export_backbone(path, tmp_path / "b.pkl", to="detectron2")
    ds = parse_dataset(str(TESTDATA / "voc"), default_split="trainval")
    register_dataset(ds)
    n = len(check_dataset(ds))
    cfg = build_config(
        "smoke_R50_C4", weights=tmp_path / "b.pkl", output_dir=tmp_path / "o", seed=0, world_size=1,
        device="cpu", train=[ds], test=[ds], overrides=["MODEL.ROI_HEADS.NUM_CLASSES", str(n)],
    )  # fmt: skip
    trainer = trainer_class()(cfg)
    trainer.resume_or_load(resume=True)
    model = trainer.checkpointer.model
    assert backbone_not_loaded(model, safe_load(tmp_path / "b.pkl")["model"]) == []
    sd = model.state_dict()
    assert torch.equal(sd["backbone.stem.conv1.weight"], r50["conv1.weight"])
    assert torch.equal(sd["roi_heads.res5.2.conv3.weight"], r50["layer4.2.conv3.weight"])
    assert "roi_heads.res5.norm.weight" in sd


def _check_record(record, keys):
    assert record["schema"] == "mochi.record/1" and record["task"] == "detection"
    assert set(record["metrics"]) == set(keys)
    assert all(isinstance(v, float) and math.isfinite(v) for v in record["metrics"].values()), record[
        "metrics"
    ]
    hp = record["hyperparameters"]
    assert hp["INPUT.FORMAT"] == "RGB" and hp["MODEL.RESNETS.NORM"] == "BN" and hp["SOLVER.MAX_ITER"] == 2


@pytest.mark.detectron2
@pytest.mark.slow
def test_finetune_coco_with_masks_on_real_photos(mochi_r50, tmp_path):
    _needs_detectron2()
    _needs_testdata()
    ann = str(TESTDATA / "coco" / "annotations.json")
    args = ["detect", str(mochi_r50[0]), "--config", "smoke_R50_C4", "-o", str(tmp_path / "run"),
            "--num-gpus", "0", "--train", ann, "--test", ann, "-q", "MODEL.MASK_ON", "True"]  # fmt: skip
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "mask_AP50" in out.output
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "results").glob("*.json"))]
    seed = next(r for r in records if r["task"] == "detection")
    _check_record(seed, ["AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75"])
    assert seed["evaluated"]["format"] == "mochi" and seed["protocol"] == "smoke_R50_C4"
    agg = next(r for r in records if r["task"] == "detection-aggregate")
    assert agg["metrics"]["mask_AP"]["n"] == 1 and agg["seeds"] == [0]


@pytest.mark.detectron2
@pytest.mark.slow
def test_finetune_voc_seeds_aggregate_and_interrupted_seed_resumes(mochi_r50, tmp_path, monkeypatch):
    _needs_detectron2()
    _needs_testdata()
    from detectron2.engine import HookBase

    import mochi.eval.detection as detection
    import mochi.eval.detection_trainer as trainer_module

    real = trainer_module.trainer_class

    class Interrupt(HookBase):
        def after_step(self):
            if self.trainer.cfg.SEED == 1 and self.trainer.iter == 0:
                raise KeyboardInterrupt("simulated interruption after the first iteration of seed 1")

    def interrupted_trainer_class():
        base = real()

        class Trainer(base):
            def build_hooks(self):
                return [*super().build_hooks(), Interrupt()]  # after the periodic checkpointer

        return Trainer

    voc = str(TESTDATA / "voc")
    config = DetectionConfig(mochi_r50[0], config="smoke_R50_C4", output=tmp_path / "run", seeds=[0, 1],
                             train=[voc], test=[voc], num_gpus=0, overrides=["SOLVER.CHECKPOINT_PERIOD", "1"],
                             verbose=False)  # fmt: skip
    monkeypatch.setattr(trainer_module, "trainer_class", interrupted_trainer_class)
    before = _global_state()
    with pytest.raises(KeyboardInterrupt):
        detection.run_detection(config)
    assert _global_state() == before  # nothing global changed, also when a seed raises
    assert (tmp_path / "run" / "seed0" / "record.json").is_file()
    assert not (tmp_path / "run" / "seed1" / "record.json").exists()
    assert (tmp_path / "run" / "seed1" / "last_checkpoint").read_text().strip() == "model_0000000.pth"

    monkeypatch.setattr(trainer_module, "trainer_class", real)
    run = detection.run_detection(config)
    assert _global_state() == before
    assert run.skipped_seeds == [0]  # finished seeds are not rerun
    assert [r["seed"] for r in run.seeds] == [0, 1] and run.seeds[1]["resumed_from_iter"] == 1
    for r in run.seeds:
        _check_record(r, ["AP", "AP50", "AP75"])
    agg = run.aggregate
    assert agg["task"] == "detection-aggregate" and agg["seeds"] == [0, 1]
    for name in ("AP", "AP50", "AP75"):
        values = [r["metrics"][name] for r in run.seeds]
        assert agg["metrics"][name]["values"] == values and agg["metrics"][name]["n"] == 2
        assert math.isclose(agg["metrics"][name]["mean"], sum(values) / 2)
        assert math.isclose(agg["metrics"][name]["std"], abs(values[0] - values[1]) / math.sqrt(2))
    records = list((tmp_path / "run" / "results").glob("*.json"))
    assert len(records) == 3  # two seeds and one aggregate, each written once
    again = detection.run_detection(config)
    assert again.skipped_seeds == [0, 1] and again.aggregate["id"] == agg["id"] and not again.written


def test_bad_seeds_are_named_by_the_flag(tmp_path):
    out = CliRunner().invoke(main, ["detect", str(tmp_path / "c.pth"), "--config", "smoke_R50_C4", "--seeds",
                                    "0,x", "-o", str(tmp_path / "o")])  # fmt: skip
    assert out.exit_code == 2 and "'0,x': comma-separated integers" in out.output
    assert not (tmp_path / "o").exists()
