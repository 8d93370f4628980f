"""`mochi plot`: the drawn series are the values of the run's metrics.jsonl and of the kNN records."""

import json
import shutil
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from mochi.cli import main
from mochi.errors import MochiError
from mochi.eval.plots import (
    MIXING_GID,
    QUANTITIES,
    knn_curve,
    knn_series,
    load_run,
    series_label,
    training_curves,
)
from mochi.eval.records import load_records, write_records
from mochi.pretrain.config import PretrainConfig
from mochi.pretrain.train import pretrain

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TITLES = dict(QUANTITIES)
KNN = [
    "knn", "--random-init", "-a", "resnet18", "--data", "fashion-mnist-embedded", "--image-size", "32",
    "--limit-train", "200", "--limit-test", "60", "-b", "100", "-q", "--no-cache", "-k", "5,10,20",
    "-t", "0.07,0.1",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two real, tiny pretraining runs: MoCo-v2 (1 epoch) and MoCHi mixing from its second epoch."""
    root = tmp_path_factory.mktemp("runs")
    common = dict(
        data="fashion-mnist-embedded", limit=64, arch="resnet18", image_size=32, aug="aug-plus-small",
        batch_size=32, queue_size=64, momentum=0.99, bn_splits=2, workers=0, log_every=1,
    )  # fmt: skip
    pretrain(PretrainConfig(**common, epochs=1, output=str(root / "moco")), show_progress=False)
    mixing = dict(n_hard=16, s=16, s_prime=4, mochi_warmup=1)
    pretrain(PretrainConfig(**common, **mixing, epochs=2, output=str(root / "mochi")), show_progress=False)
    return {"moco": root / "moco", "mochi": root / "mochi"}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Real kNN records of a random-init ResNet-18 with two init seeds."""
    out = tmp_path_factory.mktemp("results")
    for seed in ("0", "1"):
        res = CliRunner().invoke(main, [*KNN, "--init-seed", seed, "-o", str(out)])
        assert res.exit_code == 0, res.output
    return out


def step_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "step"]


def panels(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes}


@pytest.mark.slow  # two tiny pretraining runs (module fixture)
def test_curves_draw_the_metrics_values(runs):
    fig = training_curves([runs["moco"], runs["mochi"]])
    axes = panels(fig)
    # MoCHi logged hard_sim / synthetic_sim / syn_*; labelled data: the false-negative rates
    assert set(axes) == {title for _, title in QUANTITIES}
    for key, title in QUANTITIES:
        drawn = {line.get_label(): line for line in axes[title].get_lines() if line.get_gid() != MIXING_GID}
        for name, run_dir in runs.items():
            rows = [r for r in step_rows(run_dir) if key in r]
            label = series_label(name, key)
            if not rows:  # MoCo-v2 has no similarities of mixed negatives: no line
                assert label not in drawn
                continue
            assert list(drawn[label].get_xdata()) == [r["global_step"] for r in rows]
            assert list(drawn[label].get_ydata()) == [r[key] for r in rows]
    assert {"mochi: fn_rate_hard", "mochi: fn_rate_queue"} <= {
        line.get_label() for line in axes[TITLES["fn_rate_hard"]].get_lines()
    }
    # mixing starts after the warm-up epoch: at 1 × steps_per_epoch, marked for MoCHi only
    per_epoch = json.loads((runs["mochi"] / "config.json").read_text())["steps_per_epoch"]
    marks = [line for line in axes[TITLES["loss"]].get_lines() if line.get_gid() == MIXING_GID]
    assert [m.get_label() for m in marks] == ["mochi: mixing starts"]
    assert list(marks[0].get_xdata()) == [per_epoch, per_epoch]
    first_mixing = next(r for r in step_rows(runs["mochi"]) if r["mixing"])
    assert first_mixing["global_step"] == per_epoch + 1


@pytest.mark.slow  # two tiny pretraining runs (module fixture)
def test_a_run_still_writing_is_plotted_without_its_torn_line(runs, tmp_path):
    copy = tmp_path / "mochi"
    shutil.copytree(runs["mochi"], copy)
    with open(copy / "metrics.jsonl", "a") as fh:
        fh.write('{"type": "step", "loss": 6.')  # the run is writing this line
    assert load_run(copy).steps == step_rows(runs["mochi"])


@pytest.mark.slow  # two tiny pretraining runs (module fixture)
def test_plot_curves_cli_writes_png_and_svg(runs, tmp_path):
    out = tmp_path / "plots" / "curves"
    res = CliRunner().invoke(main, ["plot", "curves", str(runs["moco"]), str(runs["mochi"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    png, svg = out.with_name("curves.png"), out.with_name("curves.svg")
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png", "curves.svg"]
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # the SVG holds the panels' titles as text
    assert TITLES["hard_sim"] in svg.read_text()
    # a suffix alone chooses the format
    res = CliRunner().invoke(main, ["plot", "curves", str(runs["moco"]), "-o", str(tmp_path / "one.pdf")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "one.pdf").read_bytes().startswith(b"%PDF") and not (tmp_path / "one.png").exists()


def test_knn_plot_draws_the_records_settings(results, tmp_path):
    records = load_records(results)
    assert len(records) == 2
    # a newer evaluation of init seed 0 replaces the older one in the plot
    newer = json.loads(json.dumps(records[0]))
    newer["id"], newer["created"] = "z-newer", "9999-01-01T00:00:00.000000Z"
    for values in newer["metrics"]["settings"].values():
        values["top1"] += 1.0
    by_seed = {r["evaluated"]["seed"]: r for r in [records[1], newer]}
    series = knn_series([*records, newer])
    assert [(s.label, s.temperature, s.seeds) for s in series] == [
        ("random-init resnet18", 0.07, 2),
        ("random-init resnet18", 0.1, 2),
    ]
    for s in series:
        assert s.ks == [5, 10, 20]
        top1 = {seed: r["metrics"]["settings"] for seed, r in by_seed.items()}
        per_seed = [[top1[seed][f"k{k}_T{s.temperature:g}"]["top1"] for seed in (0, 1)] for k in s.ks]
        assert s.top1 == pytest.approx([statistics.fmean(v) for v in per_seed])
        assert s.std == pytest.approx([statistics.stdev(v) for v in per_seed])
    (ax,) = knn_curve([*records, newer]).axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == [
        "random-init resnet18 T=0.07 (2 seeds)",
        "random-init resnet18 T=0.1 (2 seeds)",
    ]
    for line, s in zip(lines, series, strict=True):
        assert list(line.get_xdata()) == s.ks and list(line.get_ydata()) == pytest.approx(s.top1)
    # one seed: the record's own numbers, no error bars
    (single,) = [s for s in knn_series(records[:1]) if s.temperature == 0.07]
    settings = records[0]["metrics"]["settings"]
    assert single.top1 == [settings[f"k{k}_T0.07"]["top1"] for k in (5, 10, 20)] and single.std is None

    args = ["plot", "knn", str(results), "-o", str(tmp_path / "knn"), "--format", "png"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "knn.png").read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["knn.png"]


@pytest.mark.slow  # two tiny pretraining runs (module fixture)
def test_bad_input_is_one_clear_error_and_writes_nothing(runs, tmp_path):
    def plot(*args):
        return CliRunner().invoke(main, ["plot", *args])

    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = plot("curves", str(runs["moco"]), str(empty), "-o", str(out / "c"))
    assert res.exit_code == 1 and f"Error: {empty} has no metrics.jsonl" in res.output
    assert "run directory (the -o of mochi pretrain)" in res.output
    res = plot("knn", str(empty), "-o", str(out / "k"))
    assert res.exit_code == 1 and "Error: no kNN records to plot" in res.output and "mochi knn" in res.output
    res = plot("curves", str(runs["moco"]), "-o", str(out / "c"), "--format", "png,gif")
    assert res.exit_code == 1 and "cannot write images as gif: choose from png, svg, pdf" in res.output
    assert not out.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = plot("curves", str(runs["moco"]), "-o", str(blocker / "c"))
    assert res.exit_code == 1 and f"{blocker} is a file, not a folder" in res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty"]


def test_table_dots_are_the_table_cells_with_their_seeds_and_std(tmp_path):
    """`mochi plot table`: each row's large dot is its cell's mean, its error bar the sample std, the grey
    dots the seeds' values; published rows are hollow; the axis spans the numbers, so a one-point
    difference takes a visible share of the panel (an axis from zero would make it a hair)."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import ErrorbarContainer
    from test_tables import IN1K, SHA_B, linear

    from mochi.eval.plots import table_dots
    from mochi.eval.records import write_records
    from mochi.eval.tables import build_table

    seeds = [60.0, 61.0, 62.5]
    records = [linear(v, seed=s, protocol="moco", data=IN1K) for s, v in enumerate(seeds)]
    records += [linear(63.5, protocol="moco", data=IN1K, sha=SHA_B, label="mochi/checkpoint_0199.pth.tar")]
    table = build_table(records, reference="moco")
    fig = table_dots(table, columns="linear")
    ax = fig.axes[0]
    dots = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    shown = [(i, r.cells[table.columns[0].label]) for i, r in enumerate(table.rows) if r.cells]
    assert len(dots) == len(shown)
    for dot, (i, cell) in zip(dots, shown, strict=True):
        (x,), (y,) = dot.lines[0].get_data()
        assert (x, y) == (pytest.approx(cell.mean), i)
        half = (lambda seg: (seg[1][0] - seg[0][0]) / 2)(dot.lines[2][0].get_segments()[0])
        assert half == pytest.approx(cell.std or 0.0)
        hollow = dot.lines[0].get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))
        assert hollow == table.rows[i].published
    assert dots[0].lines[0].get_xdata()[0] == pytest.approx(statistics.mean(seeds))
    half = (lambda seg: (seg[1][0] - seg[0][0]) / 2)(dots[0].lines[2][0].get_segments()[0])
    assert half == pytest.approx(statistics.stdev(seeds))
    assert any(r.published for r in table.rows)
    (grey,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(x for x, _ in grey.get_offsets()) == seeds  # only the row with several seeds
    texts = [t.get_text() for t in ax.texts]
    assert f"{statistics.mean(seeds):.1f} ± {statistics.stdev(seeds):.1f} (n=3)" in texts and "63.5" in texts
    lo, hi = ax.get_xlim()
    numbers = [c.mean for _, c in shown] + seeds
    assert lo < min(numbers) and hi > max(numbers)
    assert 1.0 / (hi - lo) > 0.05  # one point is more than 5 % of the panel's width
    with pytest.raises(Exception, match="no table column matches 'nope'; columns: IN-1k linear"):
        table_dots(table, columns="nope")
    # the command: PNG from a results folder
    write_records(tmp_path / "results", records)
    args = ["plot", "table", str(tmp_path / "results"), "-o", str(tmp_path / "b.png")]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_knn_plot_rows_method_pools_the_pretraining_seeds_of_a_recipe(tmp_path):
    """``--rows method``: the checkpoints of one recipe are one line, their mean and sample std; another
    recipe, and an earlier checkpoint of a run, are lines of their own; many lines: legend below, no two
    lines of one colour."""
    from test_tables import knn

    def pretrained(top1_k20, seed, sha, epochs_done=20, temperature=0.2):
        record = knn({"k20_T0.07": top1_k20, "k10_T0.07": top1_k20 + 1.0}, sha=sha)
        config = {"arch": "resnet50", "epochs": 20, "seed": seed, "temperature": temperature}
        record["evaluated"]["pretraining"] = {**config, "output": f"runs/s{seed}"}
        record["evaluated"]["pretraining_progress"] = {"epoch": epochs_done, "step": 0}
        return record

    moco = [70.0, 72.0, 71.5]
    records = [pretrained(v, s, sha=f"{s}a" * 32) for s, v in enumerate(moco)]
    records += [pretrained(60.0, 0, sha="0b" * 32, epochs_done=10)]  # epoch 10 of seed 0's run
    records += [pretrained(65.0, 0, sha="0c" * 32, temperature=0.1)]
    series = knn_series(records, rows="method")
    assert [(s.label, s.seeds) for s in series] == [
        ("MoCo-v2 resnet50, 20 ep", 3), ("MoCo-v2 resnet50, 10 of 20 ep", 1), ("MoCo-v2 resnet50, 20 ep", 1),
    ]  # fmt: skip
    assert series[0].top1 == pytest.approx([statistics.fmean(moco) + 1.0, statistics.fmean(moco)])
    assert series[0].std == pytest.approx([statistics.stdev(moco)] * 2)
    assert len(knn_series(records)) == 5  # by backbone: one line per checkpoint
    with pytest.raises(MochiError, match="unknown rows pivot 'run'"):
        knn_series(records, rows="run")
    many = [pretrained(70.0 + s, s, sha=f"{s:02d}" * 32, temperature=0.01 * (s + 1)) for s in range(12)]
    fig = knn_curve(many, rows="method")
    (ax,) = fig.axes
    assert ax.get_legend() is None and len(fig.legends) == 1  # below the plot, over no data
    colours = [tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
               for line in ax.get_lines()]  # fmt: skip
    assert len(colours) == 12 and len(set(colours)) == 12
    write_records(tmp_path / "results", records)
    args = ["plot", "knn", str(tmp_path / "results"), "--rows", "method", "-o", str(tmp_path / "k.png")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "k.png").read_bytes().startswith(PNG_MAGIC)
