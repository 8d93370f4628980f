"""Detectron2 glue of the detection protocols: norm choice, shipped configs, datasets, install check."""

import subprocess
import sys

import pytest
import torch

from mochi.detectron_configs import config_names
from mochi.errors import ConfigError, MochiError
from mochi.transfer.detectron2 import choose_norm, parse_dataset, require_detectron2

SHIPPED = ["voc07_R50_C4_24k", "coco_R50_C4_1x", "coco_R50_C4_2x", "coco_R50_FPN_1x", "smoke_R50_C4"]


def _needs_detectron2():
    pytest.importorskip(
        "detectron2", reason="Detectron2 not installed; install it with scripts/install_detectron2.sh"
    )


# --------------------------------------------------------------------------- pure parts, no Detectron2


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


def test_choose_norm_error_names_the_field():
    with pytest.raises(ConfigError, match=r"^norm 'GN': choose one of auto") as info:
        choose_norm({"MODEL.RESNETS.NORM": "BN"}, 1, "GN")
    assert info.value.field == "norm"


def test_shipped_config_names():
    assert config_names() == sorted(SHIPPED)


def test_dataset_spec_errors(tmp_path):
    with pytest.raises(MochiError, match="not found"):
        parse_dataset(str(tmp_path / "none.json"), default_split="test")
    (tmp_path / "voc").mkdir()
    with pytest.raises(MochiError, match="class_names.txt") as info:
        parse_dataset(str(tmp_path / "voc"), default_split="test")
    assert isinstance(info.value, ConfigError) and info.value.field == "classes"
    ds = parse_dataset(f"{tmp_path / 'voc'}:val", default_split="test", classes=["a", "b"])
    assert (ds.kind, ds.split, ds.classes) == ("voc", "val", ("a", "b"))
    assert parse_dataset("voc_2007_test", default_split="test").kind == "builtin"


def test_package_imports_without_detectron2():
    # Everything but the ROI head imports without Detectron2, and says how to install it where it is needed.
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "import mochi.transfer.detectron2 as glue\n"
        "from mochi.errors import MochiError\n"
        "assert 'detectron2' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    glue.build_config('smoke_R50_C4', weights='', output_dir='x', seed=0, world_size=1, device='')\n"
        "except MochiError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "scripts/install_detectron2.sh" in out


def test_require_detectron2_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # import fails as if absent
    with pytest.raises(MochiError, match="scripts/install_detectron2.sh"):
        require_detectron2()


# ----------------------------------------------------------------------------------- with Detectron2


@pytest.mark.detectron2
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_composes_and_builds(name):
    _needs_detectron2()
    from detectron2.modeling import build_model

    from mochi.transfer.detectron2 import build_config

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
    from mochi.transfer.detectron2 import build_config

    cfg = build_config("voc07_R50_C4_24k", weights="", output_dir="x", seed=0, world_size=8, device="cpu")
    assert cfg.MODEL.RESNETS.NORM == "naiveSyncBN"
    cfg = build_config("coco_R50_FPN_1x", weights="", output_dir="x", seed=0, world_size=8, device="cpu")
    assert cfg.MODEL.RESNETS.NORM == cfg.MODEL.FPN.NORM == cfg.MODEL.ROI_MASK_HEAD.NORM == "SyncBN"


@pytest.mark.detectron2
def test_config_errors_name_fields():
    _needs_detectron2()
    from mochi.transfer.detectron2 import build_config

    with pytest.raises(ConfigError, match=r"^config 'nope': neither a shipped config") as info:
        build_config("nope", weights="", output_dir="x", seed=0, world_size=1, device="cpu")
    assert info.value.field == "config"
    with pytest.raises(ConfigError, match="^overrides must be KEY VALUE pairs") as info:
        build_config("smoke_R50_C4", weights="", output_dir="x", seed=0, world_size=1, device="cpu",
                     overrides=["SOLVER.MAX_ITER"])  # fmt: skip
    assert info.value.field == "overrides"
