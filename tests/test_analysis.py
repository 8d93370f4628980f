"""Alignment and uniformity: the math against direct formulas, and `mochi analyze` / `mochi plot align`
end to end on a tiny real checkpoint in the reference MoCo layout."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mochi import layout
from mochi.cli import main
from mochi.eval.analysis import alignment, build_head, uniformity
from mochi.eval.plots import align_points, alignment_uniformity
from mochi.eval.records import load_records, make_record, validate_record
from mochi.eval.tables import build_table
from mochi.resnet import build_torchvision_resnet

DATA = ["--data", "fashion-mnist-embedded", "--limit", "24", "-b", "12"]


# ----------------------------------------------------------------------------------------- the math


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_alignment_is_the_mean_powered_distance_of_unit_pairs():
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(2))
    for alpha in (2.0, 1.0, 3.0):
        direct = sum(float((unit(x)[i] - unit(y)[i]).norm()) ** alpha for i in range(7)) / 7
        assert alignment(x, y, alpha) == pytest.approx(direct, rel=1e-6)
    assert alignment(x, x.clone() * 4) == pytest.approx(0.0, abs=1e-12)  # identical views, any scale
    assert alignment(x, -x) == pytest.approx(4.0)  # antipodal pairs: the largest value, 2^alpha


def test_uniformity_is_log_mean_exp_over_each_unordered_pair():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    u = unit(x)
    for t in (2.0, 0.5):
        terms = [math.exp(-t * float((u[i] - u[j]).norm()) ** 2) for i in range(6) for j in range(i + 1, 6)]
        assert uniformity(x, t) == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-9)
    assert uniformity(x[:1].repeat(5, 1)) == pytest.approx(0.0, abs=1e-12)  # one point: exp(0) = 1


@pytest.mark.parametrize("n", [2, 3, 8, 50])
def test_uniformity_of_points_evenly_spread_on_the_circle_has_its_closed_form(n):
    angles = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    points = 3 * torch.stack([angles.cos(), angles.sin()], dim=1)  # not unit: normalised inside
    # Every point sees the others at chords 2 sin(πk/n), k = 1..n-1: the mean over pairs is one point's.
    chords = [2 * math.sin(math.pi * k / n) for k in range(1, n)]
    closed = math.log(sum(math.exp(-2 * c**2) for c in chords) / (n - 1))
    assert uniformity(points, t=2) == pytest.approx(closed, rel=1e-9)


def test_uniformity_stays_finite_when_every_term_underflows():
    points = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert uniformity(points, t=500.0) == pytest.approx(-2000.0)  # exp(-2000) is 0 in float64


def test_the_head_is_rebuilt_from_its_tensors():
    g = torch.Generator().manual_seed(2)
    w0, b0, w2, b2 = (torch.randn(s, generator=g) for s in ((8, 8), (8,), (4, 8), (4,)))
    head = build_head({"fc.0.weight": w0, "fc.0.bias": b0, "fc.2.weight": w2, "fc.2.bias": b2})
    x = torch.randn(3, 8, generator=g)
    with torch.no_grad():
        assert torch.allclose(head(x), torch.relu(x @ w0.T + b0) @ w2.T + b2)
        linear = build_head({"fc.weight": w2})  # MoCo-v1: one Linear, here without bias
        assert torch.allclose(linear(x), x @ w2.T)
    assert build_head({}) is None and build_head({"head.weight": w2}) is None


# ------------------------------------------------------------------------------------- end to end


def write_checkpoint(path: Path, epoch: int) -> Path:
    """A mochi pretraining checkpoint (reference MoCo layout) of a small-stem ResNet-18 with an MLP head."""
    torch.manual_seed(7)  # not the random-init baseline's seed 0: other weights, other numbers
    net = build_torchvision_resnet("resnet18", True)
    r18 = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    mlp = {
        "fc.0.weight": torch.randn(512, 512) / 20, "fc.0.bias": torch.randn(512) / 20,
        "fc.2.weight": torch.randn(16, 512) / 20, "fc.2.bias": torch.randn(16) / 20,
    }  # fmt: skip
    sd = {f"module.encoder_q.{k}": v for k, v in {**r18, **mlp}.items()}
    config = {"arch": "resnet18", "small_stem": True, "aug": "aug-plus-small", "image_size": 32}
    meta = {"format_version": layout.FORMAT_VERSION, "config": config, "step": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "arch": "resnet18", "state_dict": sd, "optimizer": {}, "mochi": meta}, path)
    return path


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """`mochi analyze` of two checkpoints of one run (same weights, epochs 1 and 2) and a random init."""
    root = tmp_path_factory.mktemp("analyze")
    ckpts = [write_checkpoint(root / "run" / f"checkpoint_000{e - 1}.pth.tar", e) for e in (2, 1)]
    out = root / "results"
    res = CliRunner().invoke(main, ["analyze", *map(str, ckpts), *DATA, "-o", str(out)])
    assert res.exit_code == 0, res.output
    baseline = ["analyze", "--random-init", "-a", "resnet18", "--small-stem", "--image-size", "32"]
    res2 = CliRunner().invoke(main, [*baseline, "--aug", "aug-plus-small", *DATA, "-o", str(out)])
    assert res2.exit_code == 0, res2.output
    return out, ckpts, res.output


def test_analyze_writes_one_valid_record_per_checkpoint_and_embedding(analysed):
    out, ckpts, output = analysed
    records = load_records(out)
    for r in records:
        validate_record(r)
        assert (r["task"], r["protocol"], r["seed"]) == ("analysis", "alignment-uniformity", 0)
        hyper = r["hyperparameters"]
        # The two views are drawn with the checkpoint's pretraining augmentation and size.
        assert (hyper["alpha"], hyper["t"], hyper["augmentation"], hyper["image_size"]) == (
            2.0, 2.0, "aug-plus-small", 32,
        )  # fmt: skip
        assert hyper["subset"] == r["data"]["subset"]["num_images"] == 24
        assert r["data"]["dataset"] == "fashion-mnist-embedded"
    got = sorted((r["evaluated"]["label"], r["hyperparameters"]["embedding"]) for r in records)
    assert got == [
        ("random-init resnet18 (small stem)", "backbone"),
        ("run/checkpoint_0000.pth.tar", "backbone"), ("run/checkpoint_0000.pth.tar", "head"),
        ("run/checkpoint_0001.pth.tar", "backbone"), ("run/checkpoint_0001.pth.tar", "head"),
    ]  # fmt: skip
    by = {(r["evaluated"]["label"], r["hyperparameters"]["embedding"]): r for r in records}
    assert by[("run/checkpoint_0001.pth.tar", "head")]["metrics"]["dim"] == 16
    assert by[("run/checkpoint_0001.pth.tar", "backbone")]["metrics"]["dim"] == 512
    assert by[("run/checkpoint_0000.pth.tar", "head")]["evaluated"]["epoch"] == 1
    # Same weights, same images, same seeded views: the same numbers, whatever the checkpoint's order.
    for emb in ("backbone", "head"):
        a, b = (by[(f"run/checkpoint_000{i}.pth.tar", emb)]["metrics"] for i in (0, 1))
        assert a == b
    for r in records:
        m = r["metrics"]
        assert 0 <= m["align"] <= 4 and m["uniform"] <= 0
        line = f"{r['evaluated']['label']}  {r['hyperparameters']['embedding']:<8}  align {m['align']:.4f}"
        assert line in output or r["evaluated"]["random_init"]


def test_the_table_has_align_and_uniform_columns_lowest_in_bold(analysed):
    out, _, _ = analysed
    table = build_table(load_records(out))
    labels = [c.label for c in table.columns]
    assert labels == [
        "F-MNIST (embedded) backbone align ↓", "F-MNIST (embedded) backbone uniform ↓",
        "F-MNIST (embedded) head align ↓", "F-MNIST (embedded) head uniform ↓",
    ]  # fmt: skip
    res = CliRunner().invoke(main, ["table", str(out), "--format", "latex"])
    assert res.exit_code == 0, res.output
    rows = {line.split(" & ")[0]: line.split(" & ")[1:] for line in res.output.splitlines() if " & " in line}
    assert rows["backbone"][:2] == [r"align $\downarrow$", r"uniform $\downarrow$"]
    rows = {k: v for k, v in rows.items() if k.startswith(("run/", "random-init"))}
    assert len(rows) == 3
    for column in range(4):  # each column: the lowest mean (ties included) is bold, nothing else
        cells = {k: v[column] for k, v in rows.items() if re.search(r"\d", v[column])}
        values = {k: float(re.search(r"-?\d+\.\d+", v).group()) for k, v in cells.items()}
        bold = {k for k, v in cells.items() if v.startswith(r"\textbf{")}
        assert bold == {k for k in cells if values[k] == min(values.values())}
        assert len(cells) == (3 if column < 2 else 2)  # a random init has no projection head


def test_plot_align_draws_the_records_values(analysed, tmp_path):
    out, _, _ = analysed
    records = load_records(out)
    fig = alignment_uniformity(records, trajectory=True)
    assert [ax.get_title() for ax in fig.axes] == ["backbone features", "projection head"]
    drawn = {
        (ax.get_title(), tuple(xy))
        for ax in fig.axes
        for coll in ax.collections
        for xy in coll.get_offsets().tolist()
    }
    title = {"backbone": "backbone features", "head": "projection head"}
    want = {
        (title[r["hyperparameters"]["embedding"]], (r["metrics"]["uniform"], r["metrics"]["align"]))
        for r in records
    }
    assert drawn == want
    res = CliRunner().invoke(main, ["plot", "align", str(out), "--trajectory", "-o", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _record(label: str, epoch: int, uniform: float, align: float, seed: int = 0) -> dict:
    evaluated = {"checkpoint": f"runs/{label}", "label": label, "sha256": label, "epoch": epoch,
                 "arch": "resnet18", "random_init": False}  # fmt: skip
    return make_record(
        task="analysis", protocol="alignment-uniformity", evaluated=evaluated,
        data={"dataset": "cifar10"}, hyperparameters={"embedding": "head", "alpha": 2.0, "t": 2.0},
        metrics={"align": align, "uniform": uniform}, seed=seed,
    )  # fmt: skip


def test_trajectory_joins_a_runs_checkpoints_in_epoch_order_and_averages_seeds():
    records = [
        _record("moco/checkpoint_0002.pth.tar", 3, -2.0, 0.6),
        _record("moco/checkpoint_0000.pth.tar", 1, -1.0, 0.2),
        _record("moco/checkpoint_0001.pth.tar", 2, -1.5, 0.4),
        _record("mochi/checkpoint_0000.pth.tar", 1, -3.0, 0.5, seed=0),
        _record("mochi/checkpoint_0000.pth.tar", 1, -3.5, 0.7, seed=1),
    ]
    points = align_points(records)
    mochi = [p for p in points if p.run == "runs/mochi"]
    assert [(p.uniform, p.align, p.seeds) for p in mochi] == [(-3.25, pytest.approx(0.6), 2)]
    (ax,) = alignment_uniformity(records, trajectory=True).axes
    (line,) = ax.lines  # one run with several checkpoints: one line, in epoch order
    assert line.get_xdata().tolist() == [-1.0, -1.5, -2.0] and line.get_ydata().tolist() == [0.2, 0.4, 0.6]
    assert not alignment_uniformity(records).axes[0].lines


def test_user_errors_are_one_line_and_write_nothing(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c" / "checkpoint_0000.pth.tar", 1)
    out = tmp_path / "results"

    def analyze(*args):
        res = CliRunner().invoke(main, ["analyze", *args, "-o", str(out)])
        assert res.exit_code != 0 and "Traceback" not in res.output, res.output
        return res.output

    missing = tmp_path / "nope.pth.tar"
    text = analyze(str(ckpt), str(missing), *DATA)
    assert f"Error: checkpoint not found: {missing}" in text
    text = analyze(str(ckpt), "--data", str(tmp_path / "no-such-folder"))
    assert text.startswith("Error:") and "no-such-folder" in text and len(text.strip().splitlines()) == 1
    assert "Error: --limit must be at least 2 images, got 1" in analyze(str(ckpt), *DATA, "--limit", "1")
    assert "checkpoint paths or --random-init" in analyze(*DATA)
    empty = tmp_path / "c" / "empty.pth.tar"
    empty.write_bytes(b"")  # fails after the first checkpoint was measured: still nothing written
    assert f"Error: {empty} is empty" in analyze(str(ckpt), str(empty), *DATA)
    assert "--aug" in analyze("--random-init", "-a", "resnet18", "--aug", "blur", *DATA)
    res = CliRunner().invoke(main, ["plot", "align", str(tmp_path / "c"), "-o", str(out / "a")])
    assert res.exit_code == 1 and "Error: no analysis records to plot" in res.output
    assert not out.exists()
    shutil.rmtree(tmp_path / "c")
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == "[]"
