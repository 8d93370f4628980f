"""Detection transfer: configs, norm choice, aggregation, and real CPU fine-tunes with Detectron2.

The real-photo tests use the labelme example datasets cached by ``scripts/fetch_detection_testdata.py``
(run by ``scripts/setup.sh``); they skip with that command as the reason when the cache is absent.
"""

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mochi import layout
from mochi.cli import main
from mochi.detectron_configs import config_names
from mochi.errors import MochiError
from mochi.eval.detection import (
    aggregate,
    choose_norm,
    metrics_from_results,
    parse_dataset,
    require_detectron2,
)
from mochi.transfer import build_torchvision_resnet

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("MOCHI_TESTDATA", ROOT / ".cache" / "testdata")) / "labelme-6.3.1"
FETCH = "python scripts/fetch_detection_testdata.py"
SHIPPED = ["voc07_R50_C4_24k", "coco_R50_C4_1x", "coco_R50_C4_2x", "coco_R50_FPN_1x", "smoke_R50_C4"]


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


@pytest.mark.parametrize(
    "norm, world, value, expected",
    [
        ("auto", 1, "SyncBN", "BN"),
        ("auto", 1, "naiveSyncBN", "BN"),
        ("auto", 8, "naiveSyncBN", "naiveSyncBN"),
        ("auto", 1, "FrozenBN", "FrozenBN"),
        ("auto", 1, "", ""),
        ("config", 1, "SyncBN", "SyncBN"),
        ("BN", 8, "SyncBN", "BN"),
        ("SyncBN", 1, "BN", "SyncBN"),
        ("BN", 1, "", ""),
    ],
)
def test_choose_norm(norm, world, value, expected):
    assert choose_norm({"MODEL.RESNETS.NORM": value}, world, norm) == {"MODEL.RESNETS.NORM": expected}


def test_metrics_from_results():
    res = {"bbox": {"AP": 50.0, "AP50": 80.0, "AP75": 55.0, "APs": 1.0}, "segm": {"AP": float("nan")}}
    assert metrics_from_results(res) == {"AP": 50.0, "AP50": 80.0, "AP75": 55.0, "mask_AP": None}


def test_shipped_config_names():
    assert config_names() == sorted(SHIPPED)


def test_dataset_spec_errors(tmp_path):
    with pytest.raises(MochiError, match="not found"):
        parse_dataset(str(tmp_path / "none.json"), default_split="test")
    (tmp_path / "voc").mkdir()
    with pytest.raises(MochiError, match="class_names.txt"):
        parse_dataset(str(tmp_path / "voc"), default_split="test")
    ds = parse_dataset(f"{tmp_path / 'voc'}:val", default_split="test", classes=["a", "b"])
    assert (ds.kind, ds.split, ds.classes) == ("voc", "val", ("a", "b"))
    assert parse_dataset("voc_2007_test", default_split="test").kind == "builtin"


def test_detect_without_detectron2_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import fails as if absent
    with pytest.raises(MochiError, match="scripts/install_detectron2.sh"):
        require_detectron2()
    torch.save({}, tmp_path / "c.pth")
    out = CliRunner().invoke(main, ["detect", str(tmp_path / "c.pth"), "--config", "smoke_R50_C4", "-o", "x"])
    assert out.exit_code == 1 and "install_detectron2.sh" in out.output and "Traceback" not in out.output


# ----------------------------------------------------------------------------------- with Detectron2


@pytest.mark.detectron2
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_composes_and_builds(name):
    _needs_detectron2()
    from detectron2.modeling import build_model

    from mochi.eval.detection import build_config

    cfg = build_config(name, weights="", output_dir="unused", seed=0, world_size=1, device="cpu")
    # torchvision-style input keys (docs/protocols.md#the-moco-detection-settings)
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.120, 57.375]
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.NORM == "BN"  # auto: one process
    if name.startswith("voc07"):
        assert cfg.SOLVER.MAX_ITER == 24000 and cfg.SOLVER.BASE_LR == 0.02 and cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.SOLVER.WARMUP_ITERS == 100 and cfg.TEST.PRECISE_BN.ENABLED
        assert min(cfg.INPUT.MIN_SIZE_TRAIN) == 480 and max(cfg.INPUT.MIN_SIZE_TRAIN) == 800
    if "C4" not in name:
        return
    cfg.MODEL.RESNETS.NORM = "BN"
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == "Res5ROIHeadsExtraNorm"
    assert isinstance(model.roi_heads.res5[-1], torch.nn.BatchNorm2d)
    assert model.roi_heads.res5[-1].num_features == 2048


@pytest.mark.detectron2
def test_sync_norm_is_kept_for_several_processes():
    _needs_detectron2()
    from mochi.eval.detection import build_config

    cfg = build_config("voc07_R50_C4_24k", weights="", output_dir="x", seed=0, world_size=8, device="cpu")
    assert cfg.MODEL.RESNETS.NORM == "naiveSyncBN"
    cfg = build_config("coco_R50_FPN_1x", weights="", output_dir="x", seed=0, world_size=8, device="cpu")
    assert cfg.MODEL.RESNETS.NORM == cfg.MODEL.FPN.NORM == cfg.MODEL.ROI_MASK_HEAD.NORM == "SyncBN"


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
        run_detection(mochi_r50[0], config="voc07_R50_C4_24k", output=tmp_path / "o", num_gpus=0)
    assert not (tmp_path / "o" / "backbone.pkl").exists()  # nothing converted or trained


@pytest.mark.detectron2
@pytest.mark.slow
def test_exported_backbone_loads_into_the_detector(mochi_r50, tmp_path):
    _needs_detectron2()
    _needs_testdata()
    from mochi.eval.detection import (
        _trainer_class,
        backbone_not_loaded,
        build_config,
        check_dataset,
        register_dataset,
    )
    from mochi.safe_pickle import safe_load
    from mochi.transfer import export_backbone

    path, r50 = mochi_r50
    export_backbone(path, tmp_path / "b.pkl", to="detectron2")
    ds = parse_dataset(str(TESTDATA / "voc"), default_split="trainval")
    register_dataset(ds)
    n = len(check_dataset(ds))
    cfg = build_config(
        "smoke_R50_C4", weights=tmp_path / "b.pkl", output_dir=tmp_path / "o", seed=0, world_size=1,
        device="cpu", train=[ds], test=[ds], overrides=["MODEL.ROI_HEADS.NUM_CLASSES", str(n)],
    )  # fmt: skip
    trainer = _trainer_class()(cfg)
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

    real = detection._trainer_class

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
    kwargs = dict(config="smoke_R50_C4", output=tmp_path / "run", train=[voc], test=[voc], num_gpus=0,
                  overrides=["SOLVER.CHECKPOINT_PERIOD", "1"], verbose=False)  # fmt: skip
    monkeypatch.setattr(detection, "_trainer_class", interrupted_trainer_class)
    with pytest.raises(KeyboardInterrupt):
        detection.run_detection(mochi_r50[0], seeds=[0, 1], **kwargs)
    assert (tmp_path / "run" / "seed0" / "record.json").is_file()
    assert not (tmp_path / "run" / "seed1" / "record.json").exists()
    assert (tmp_path / "run" / "seed1" / "last_checkpoint").read_text().strip() == "model_0000000.pth"

    monkeypatch.setattr(detection, "_trainer_class", real)
    run = detection.run_detection(mochi_r50[0], seeds=[0, 1], **kwargs)
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
    again = detection.run_detection(mochi_r50[0], seeds=[0, 1], **kwargs)
    assert again.skipped_seeds == [0, 1] and again.aggregate["id"] == agg["id"] and not again.written
