"""``mochi table`` and the table library: cells against mean / sample std computed here, seeds grouped,
differing hyper-parameters split, every format parsed, published rows marked; ``mochi results`` fixed."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from mochi.cli import main
from mochi.errors import MochiError
from mochi.eval.detection_metrics import aggregate
from mochi.eval.records import make_record, write_records
from mochi.eval.table_formats import render, to_csv, to_json, to_latex, to_markdown
from mochi.eval.tables import build_table, dataset_name

SHA_A, SHA_B = "a1" * 32, "b2" * 32
IN1K = {"dataset": "/data/imagenet", "train": {"split": "train", "subset": None, "root": "/data/imagenet"}}
VOC = {"dataset": "voc_2007_trainval+voc_2012_trainval -> voc_2007_test"}


def evaluated(sha=SHA_A, label="moco/checkpoint_0199.pth.tar"):
    return {"checkpoint": f"runs/{label}", "label": label, "sha256": sha, "arch": "resnet50",
            "encoder": "query", "prefix": "module.encoder_q.", "stem": "standard"}  # fmt: skip


def linear(
    top1, seed=0, sha=SHA_A, label="moco/checkpoint_0199.pth.tar", protocol="lbfgs", data=None, **hyper
):
    return make_record(
        task="linear", protocol=protocol, evaluated=evaluated(sha, label),
        data=data or {"dataset": "cifar10", "features": {"dim": 2048}},
        hyperparameters={"val_fraction": 0.2, "blas_threads": 1, **hyper},
        metrics={"top1": top1, "top5": 99.0}, seed=seed,
    )  # fmt: skip


def knn(top1_by_setting, ks=(10, 20), init_seed=None, sha=SHA_A, T=0.07):
    settings = {name: {"top1": v, "top5": 99.0} for name, v in top1_by_setting.items()}
    ev = evaluated(sha)
    if init_seed is not None:
        ev = {"checkpoint": None, "label": "random-init resnet18", "random_init": True, "arch": "resnet18",
              "stem": "standard", "seed": init_seed}  # fmt: skip
    headline = f"k20_T{T}"
    return make_record(
        task="knn", protocol="knn-weighted-vote", evaluated=ev, data={"dataset": "fashion-mnist-embedded"},
        hyperparameters={"k": list(ks), "T": [T], "backend": "faiss"},
        metrics={"headline": headline, **settings[headline], "settings": settings},
    )  # fmt: skip


def detection(seed, ap50, ap, ap75, sha=SHA_A):
    return make_record(
        task="detection", protocol="voc07_R50_C4_24k", evaluated=evaluated(sha), data=VOC,
        hyperparameters={"max_iter": 24000, "world_size": 8}, seed=seed,
        metrics={"AP": ap, "AP50": ap50, "AP75": ap75},
    )  # fmt: skip


def aggregate_of(seeds):
    first = seeds[0]
    return make_record(
        task="detection-aggregate", protocol=first["protocol"], evaluated=first["evaluated"],
        data=first["data"], hyperparameters=first["hyperparameters"],
        metrics=aggregate([r["metrics"] for r in seeds]),
        extra={"seeds": [r["seed"] for r in seeds], "seed_record_ids": [r["id"] for r in seeds]},
    )  # fmt: skip


def sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell(table, row_label, column_label):
    (row,) = [r for r in table.rows if r.label == row_label]
    return row.cells[column_label]


def test_cells_are_mean_and_sample_std_over_seeds():
    values = [70.1, 71.3, 69.8]
    records = [linear(v, seed=s) for s, v in enumerate(values)] + [
        linear(65.0, sha=SHA_B, label="b/ck.pth.tar")
    ]
    table = build_table(records)
    assert [c.label for c in table.columns] == ["CIFAR-10 linear (lbfgs) top-1"]
    c = cell(table, "moco/checkpoint_0199.pth.tar", "CIFAR-10 linear (lbfgs) top-1")
    assert c.n == 3 and c.values == values
    assert c.mean == pytest.approx(sum(values) / 3) and c.std == pytest.approx(sample_std(values))
    single = cell(table, "b/ck.pth.tar", "CIFAR-10 linear (lbfgs) top-1")
    assert (single.mean, single.std, single.n) == (65.0, None, 1)
    md = to_markdown(table)
    assert f"{sum(values) / 3:.1f} ± {sample_std(values):.1f} (n=3)" in md
    (line,) = [x for x in md.splitlines() if x.startswith("| b/ck.pth.tar")]
    assert "65.0" in line and "±" not in line and "n=" not in line


def test_random_init_rows_name_a_small_stem_even_in_records_that_did_not():
    standard = knn({"k20_T0.07": 50.0}, init_seed=0)
    small = knn({"k20_T0.07": 60.0}, init_seed=0)
    small["evaluated"]["stem"] = "small"  # written before the label named the stem: "random-init resnet18"
    table = build_table([standard, small])
    labels = sorted(row.label for row in table.rows)
    assert labels == ["random-init resnet18", "random-init resnet18 (small stem)"]
    by_label = {row.label: row.cells["F-MNIST (embedded) kNN k=20 top-1"].mean for row in table.rows}
    assert by_label == {"random-init resnet18": 50.0, "random-init resnet18 (small stem)": 60.0}


def test_a_seed_run_twice_counts_once_newest_first():
    table = build_table([linear(60.0, seed=0), linear(70.0, seed=1), linear(62.0, seed=0)])
    c = table.rows[0].cells["CIFAR-10 linear (lbfgs) top-1"]
    assert c.n == 2 and sorted(c.values) == [62.0, 70.0]


def test_random_init_seeds_are_one_cell_and_k_lists_do_not_split():
    records = [knn({"k10_T0.07": 60.0 + s, "k20_T0.07": 50.0 + s}, init_seed=s) for s in range(3)]
    records.append(knn({"k20_T0.07": 53.0}, ks=(20,), init_seed=3))  # another k list, same k=20 setting
    table = build_table(records)
    assert [c.label for c in table.columns] == ["F-MNIST (embedded) kNN k=20 top-1"]
    c = table.rows[0].cells["F-MNIST (embedded) kNN k=20 top-1"]
    assert (c.n, c.mean) == (4, pytest.approx(51.5)) and table.rows[0].label == "random-init resnet18"
    every = build_table(records, knn="all")
    assert [c.label for c in every.columns] == [
        "F-MNIST (embedded) kNN k=10 top-1", "F-MNIST (embedded) kNN k=20 top-1"
    ]  # fmt: skip
    assert every.rows[0].cells["F-MNIST (embedded) kNN k=10 top-1"].values == [60.0, 61.0, 62.0]


def test_differing_hyperparameters_become_separate_columns_never_averaged():
    records = [linear(70.0, seed=0), linear(72.0, seed=1), linear(50.0, seed=0, val_fraction=0.1)]
    records.append(linear(71.0, seed=2, blas_threads=4))  # an execution key: same setting
    table = build_table(records)
    labels = [c.label for c in table.columns]
    assert labels == [
        "CIFAR-10 linear (lbfgs) [val_fraction=0.2] top-1", "CIFAR-10 linear (lbfgs) [val_fraction=0.1] top-1"
    ]  # fmt: skip
    row = table.rows[0]
    assert row.cells[labels[0]].values == [70.0, 72.0, 71.0] and row.cells[labels[1]].values == [50.0]
    # kNN at another temperature is another column group, named by its T.
    t01 = build_table([knn({"k20_T0.07": 50.0}), knn({"k20_T0.1": 40.0}, T=0.1)])
    assert [c.label for c in t01.columns] == [
        "F-MNIST (embedded) kNN k=20 top-1", "F-MNIST (embedded) kNN k=20 T=0.1 top-1"
    ]  # fmt: skip


def test_feature_dimension_is_the_backbones_not_a_setting():
    a = linear(70.0, data={"dataset": "cifar10", "features": {"dim": 512}})
    b = linear(60.0, sha=SHA_B, label="r50.pth", data={"dataset": "cifar10", "features": {"dim": 2048}})
    assert [c.label for c in build_table([a, b]).columns] == ["CIFAR-10 linear (lbfgs) top-1"]


def test_detection_seeds_used_and_their_aggregate_skipped():
    seeds = [detection(s, 82.0 + s / 10, 57.0 - s / 10, 63.0 + s / 5) for s in range(3)]
    table = build_table([*seeds, aggregate_of(seeds)])
    assert [c.label for c in table.columns] == ["VOC07+12 AP50", "VOC07+12 AP", "VOC07+12 AP75"]
    c = table.rows[0].cells["VOC07+12 AP50"]
    assert c.n == 3 and c.std == pytest.approx(sample_std([82.0, 82.1, 82.2]))
    alone = build_table([aggregate_of(seeds)])  # the seed records live elsewhere
    assert alone.rows[0].cells["VOC07+12 AP75"].values == [63.0, 63.2, 63.4]


def test_dataset_short_names():
    assert (
        dataset_name(
            {"task": "linear", "data": {"dataset": "/d/imagenet", "train": {"subset": "imagenet100"}}}
        )
        == "IN-100"
    )
    assert dataset_name({"task": "linear", "data": IN1K}) == "IN-1k"
    assert dataset_name({"task": "detection", "data": VOC}) == "VOC07+12"
    assert (
        dataset_name({"task": "detection", "data": {"dataset": "coco_2017_train -> coco_2017_val"}}) == "COCO"
    )
    assert (
        dataset_name({"task": "knn", "data": {"dataset": "fashion-mnist-embedded"}}) == "F-MNIST (embedded)"
    )


def test_backbones_sharing_a_label_are_told_apart_by_hash():
    table = build_table([linear(70.0), linear(60.0, sha=SHA_B)])
    assert [r.label for r in table.rows] == [
        f"moco/checkpoint_0199.pth.tar [{SHA_A[:12]}]", f"moco/checkpoint_0199.pth.tar [{SHA_B[:12]}]"
    ]  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert [r["sha256"] for r in rows] == [SHA_A[:12], SHA_B[:12]]


def published_table():
    records = [linear(v, seed=s, protocol="moco", data=IN1K) for s, v in enumerate([60.0, 61.0])]
    records += [linear(80.0, protocol="moco", data=IN1K, sha=SHA_B, label="mochi/checkpoint_0199.pth.tar")]
    records += [detection(s, 83.0 + s, 58.0, 65.0) for s in range(2)]
    return build_table(records, reference="moco")


def test_published_rows_are_marked_sourced_and_only_fill_matching_columns():
    table = published_table()
    measured = [r for r in table.rows if not r.published]
    published = {r.label: r for r in table.rows if r.published}
    assert len(measured) == 2 and "MoCo v2 200 ep (R50)" in published
    v2 = published["MoCo v2 200 ep (R50)"]
    assert "arXiv:2003.04297" in v2.source and v2.sha256 is None
    assert (v2.cells["IN-1k linear (moco) top-1"].mean, v2.cells["IN-1k linear (moco) top-1"].std) == (
        67.5,
        0.1,
    )
    assert [v2.cells[f"VOC07+12 {m}"].mean for m in ("AP50", "AP", "AP75")] == [82.4, 57.0, 63.6]
    assert published["MoCo v2 800 ep (R50)"].cells["IN-1k linear (moco) top-1"].mean == 71.1
    assert set(v2.cells) <= {c.label for c in table.columns}
    # Measured cells are untouched by the published ones.
    assert measured[0].cells["IN-1k linear (moco) top-1"].values == [60.0, 61.0]
    md = to_markdown(table)
    assert "| MoCo v2 200 ep (R50) †" in md and "† MoCo v2 200 ep (R50): published; MoCo repository" in md
    rows = {r["backbone"]: r for r in csv.DictReader(io.StringIO(to_csv(table)))}
    assert rows["MoCo v2 200 ep (R50)"]["published"] == "yes" and rows[measured[0].label]["published"] == "no"
    doc = json.loads(to_json(table))
    assert [r["published"] for r in doc["rows"]] == [False, False, True, True, True, True]


def test_a_reference_with_no_matching_column_adds_nothing_and_says_so():
    table = build_table([linear(70.0)], reference="moco")
    assert len(table.rows) == 1 and "no column of these records matches" in table.notes[0]
    with pytest.raises(MochiError, match="unknown reference 'nope'.*moco"):
        build_table([linear(70.0)], reference="nope")


def test_latex_is_booktabs_with_the_best_measured_mean_in_bold():
    table = published_table()
    tex = to_latex(table)
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")]
    ncols = 1 + len(table.columns)
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert all(line.count(" & ") == ncols - 1 for line in rows)
    # One bold cell per column where two measured rows compete (IN-1k: 80.0 beats 60.5; published 67.5 and
    # 71.1 do not count); the VOC columns have one measured row, so nothing is bold there.
    assert re.findall(r"\\textbf\{([^}]*)\}", tex) == ["80.0"]
    published_lines = [line for line in rows if r"$^\dagger$" in line]
    assert len(published_lines) == 4 and not any(r"\textbf" in line for line in published_lines)
    assert r"moco/checkpoint\_0199.pth.tar" in tex and "checkpoint_0199" not in tex
    assert r"$\pm$" in tex and "±" not in tex and tex.count("{") == tex.count("}")


def test_latex_compiles_where_a_tex_is_installed(tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex on this machine: the structure test above checks the LaTeX")
    doc = (
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[utf8]{inputenc}\n\\begin{document}\n"
    )
    (tmp_path / "t.tex").write_text(doc + to_latex(published_table()) + "\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 0


def test_every_format_parses():
    table = published_table()
    md = render(table, "md").splitlines()
    header = [h.strip() for h in md[0].strip("|").split("|")]
    assert header == ["backbone", *(c.label for c in table.columns)]
    assert all(line.count("|") == len(header) + 1 for line in md[: 2 + len(table.rows)])
    rows = list(csv.reader(io.StringIO(render(table, "csv"))))
    assert rows[0][:4] == ["backbone", "sha256", "published", "source"] and len(rows) == 1 + len(table.rows)
    first = dict(zip(rows[0], rows[1], strict=True))
    c = table.rows[0].cells["IN-1k linear (moco) top-1"]
    assert float(first["IN-1k linear (moco) top-1 mean"]) == c.mean
    assert (
        float(first["IN-1k linear (moco) top-1 std"]) == c.std and first["IN-1k linear (moco) top-1 n"] == "2"
    )
    doc = json.loads(render(table, "json"))
    assert doc["rows"][0]["cells"]["IN-1k linear (moco) top-1"]["values"] == [60.0, 61.0]
    assert [c["label"] for c in doc["columns"]] == [c.label for c in table.columns]
    with pytest.raises(MochiError, match="unknown table format 'html'"):
        render(table, "html")


# --- the command line ---


def test_cli_merges_folders_and_writes_each_format(tmp_path):
    write_records(tmp_path / "a", [linear(70.0, seed=0), linear(72.0, seed=1)])
    write_records(tmp_path / "b", [linear(74.0, seed=2)])
    runner = CliRunner()
    res = runner.invoke(main, ["table", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "72.0 ± 2.0 (n=3)" in res.output
    for fmt, parse in [("csv", lambda t: list(csv.reader(io.StringIO(t)))), ("json", json.loads),
                       ("latex", lambda t: t.index(r"\bottomrule"))]:  # fmt: skip
        out = tmp_path / f"t.{fmt}"
        res = runner.invoke(main, ["table", str(tmp_path / "a"), "--format", fmt, "-o", str(out)])
        assert res.exit_code == 0, res.output
        parse(out.read_text())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "html"], "unknown --format 'html'"),
        (["--reference", "simclr"], "unknown reference 'simclr'"),
        (["--rows", "dataset"], "use one of backbone, method"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, args, message):
    write_records(tmp_path / "r", [linear(70.0)])
    out = tmp_path / "t.md"
    res = CliRunner().invoke(main, ["table", str(tmp_path / "r"), *args, "-o", str(out)])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_cli_no_records_or_a_damaged_one(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["table", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no result records in" in res.output
    write_records(tmp_path / "r", [linear(70.0)])
    (tmp_path / "r" / "broken.json").write_text("{")
    res = CliRunner().invoke(main, ["table", str(tmp_path / "r"), "-o", str(tmp_path / "t.md")])
    assert res.exit_code == 1 and "broken.json" in res.output and not (tmp_path / "t.md").exists()


def test_results_shows_detection_aggregates_as_mean_pm_std(tmp_path):
    seeds = [detection(s, 82.0 + s / 10, 57.0, 63.0) for s in range(3)]
    write_records(tmp_path, [*seeds, aggregate_of(seeds), linear(70.0)])
    res = CliRunner().invoke(main, ["results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    header = res.output.splitlines()[0].split()
    assert header[-5:] == ["AP", "AP50", "AP75", "top1", "top5"]  # in order of first appearance
    assert "82.10 ± 0.10 (n=3)" in res.output and "{'mean'" not in res.output
    (line,) = [x for x in res.output.splitlines() if " linear " in x]
    assert "70.00" in line
    res = CliRunner().invoke(main, ["results", str(tmp_path), "--task", "detection"])
    assert res.output.splitlines()[0].split()[-3:] == ["AP", "AP50", "AP75"]


@pytest.mark.slow
def test_cli_table_from_real_records(tmp_path):
    out = tmp_path / "results"
    base = ["--random-init", "-a", "resnet18", "--data", "fashion-mnist-embedded", "--image-size", "32",
            "--limit-train", "60", "--limit-test", "30", "--no-cache", "-k", "5,20",
            "-o", str(out)]  # fmt: skip
    runner = CliRunner()
    for seed in (0, 1):
        res = runner.invoke(main, ["knn", *base, "--init-seed", str(seed)])
        assert res.exit_code == 0, res.output
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    res = runner.invoke(main, ["table", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    (row,) = doc["rows"]
    c = row["cells"]["F-MNIST (embedded) kNN k=20 top-1"]
    values = sorted(r["metrics"]["top1"] for r in records)
    assert sorted(c["values"]) == values and c["n"] == 2 and c["std"] == pytest.approx(sample_std(values))


def _pretrained(top1, pretrain_seed, sha, n_hard=0, temperature=0.2):
    record = linear(top1, sha=sha, label=f"run-seed{pretrain_seed}/checkpoint_0019.pth.tar")
    config = {"arch": "resnet50", "epochs": 20, "temperature": temperature, "n_hard": n_hard,
              "s": 4 * n_hard, "s_prime": n_hard, "seed": pretrain_seed,
              "output": f"runs/run-seed{pretrain_seed}", "workers": 2}  # fmt: skip
    record["evaluated"]["pretraining"] = config
    return record


def test_method_rows_average_pretraining_seeds_and_keep_recipes_apart():
    moco = [70.0, 72.0, 71.0]
    records = [_pretrained(v, s, sha=f"{s}a" * 32) for s, v in enumerate(moco)]
    records += [_pretrained(75.0 + s, s, sha=f"{s}b" * 32, n_hard=64) for s in range(2)]
    records += [_pretrained(60.0, 0, sha="cc" * 32, temperature=0.1)]  # another recipe: its own row
    records += [knn({"k20_T0.07": 50.0, "k10_T0.07": 49.0}, init_seed=0)]
    column = "CIFAR-10 linear (lbfgs) top-1"
    by_backbone = build_table(records)
    assert len([r for r in by_backbone.rows if column in r.cells]) == 6  # one row per checkpoint
    table = build_table(records, rows="method")
    labels = [r.label for r in table.rows]
    assert labels == [
        "MoCo-v2 resnet50, 20 ep [temperature 0.2]", "MoCHi (N, s, s') = (64, 256, 64) resnet50, 20 ep",
        "MoCo-v2 resnet50, 20 ep [temperature 0.1]", "random-init resnet18",
    ]  # fmt: skip
    c = cell(table, labels[0], column)
    assert c.n == 3 and c.mean == pytest.approx(71.0) and c.std == pytest.approx(sample_std(moco))
    assert cell(table, labels[1], column).values == [75.0, 76.0]
    with pytest.raises(MochiError, match="unknown rows pivot 'dataset'"):
        build_table(records, rows="dataset")


def test_oracle_runs_get_their_own_row_and_logging_options_do_not_split_a_method():
    records = [_pretrained(70.0, 0, sha="0a" * 32), _pretrained(72.0, 1, sha="1a" * 32)]
    # logged less, learned the same: one method
    records[1]["evaluated"]["pretraining"] |= {"analysis": False, "analysis_n": 64}
    oracle = _pretrained(80.0, 0, sha="0d" * 32)
    oracle["evaluated"]["pretraining"]["oracle"] = True
    table = build_table([*records, oracle], rows="method")
    assert [r.label for r in table.rows] == [
        "MoCo-v2 resnet50, 20 ep", "MoCo-v2 + class oracle resnet50, 20 ep",
    ]  # fmt: skip
    assert cell(table, "MoCo-v2 resnet50, 20 ep", "CIFAR-10 linear (lbfgs) top-1").n == 2


def test_symmetric_runs_get_their_own_row_and_runs_saved_before_the_option_pool_with_asymmetric_ones():
    before = _pretrained(70.0, 0, sha="0a" * 32)  # written before --symmetric existed: no such field
    after = _pretrained(72.0, 1, sha="1a" * 32)
    after["evaluated"]["pretraining"]["symmetric"] = False
    sym = _pretrained(80.0, 0, sha="0e" * 32)
    sym["evaluated"]["pretraining"]["symmetric"] = True
    table = build_table([before, after, sym], rows="method")
    assert [r.label for r in table.rows] == [
        "MoCo-v2 resnet50, 20 ep", "MoCo-v2, symmetric loss resnet50, 20 ep",
    ]  # fmt: skip
    assert cell(table, "MoCo-v2 resnet50, 20 ep", "CIFAR-10 linear (lbfgs) top-1").values == [70.0, 72.0]


def test_a_method_row_on_a_limited_subset_says_how_many_images_its_epochs_were():
    """`--limit 4000` for 40 epochs and all images for 60 are different budgets: the label says so, rather
    than reading as 40 against 60 epochs of the same data."""
    whole = _pretrained(70.0, 0, sha="0a" * 32)
    limited = _pretrained(72.0, 0, sha="1a" * 32)
    limited["evaluated"]["pretraining"]["limit"] = 4000
    table = build_table([whole, limited], rows="method")
    assert [r.label for r in table.rows] == [
        "MoCo-v2 resnet50, 20 ep", "MoCo-v2 resnet50, 20 ep of 4,000 images",
    ]  # fmt: skip


def test_earlier_checkpoints_of_a_run_are_their_own_method_rows(tmp_path):
    """Epoch 1 of a 2-epoch run is not another seed of epoch 2: the record says how far the checkpoint got
    (read from a real pretraining run's checkpoints), and ``--rows method`` keeps them apart and says so."""
    from mochi.eval.backbones import load_eval_backbone

    args = ["pretrain", "--data", "fashion-mnist-embedded", "--limit", "64", "-a", "resnet18", "--image-size",
            "32", "--aug", "aug-plus-small", "-b", "32", "--moco-k", "64", "--moco-m", "0.99", "--bn-splits",
            "2", "-j", "0", "-q", "--epochs", "2", "-o", str(tmp_path / "run")]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    evaluated = [
        load_eval_backbone(tmp_path / "run" / f"checkpoint_000{i}.pth.tar").evaluated for i in (0, 1)
    ]
    assert [e["pretraining_progress"] for e in evaluated] == [
        {"epoch": e, "step": 0, "steps_per_epoch": 2} for e in (1, 2)
    ]
    records = []
    for i, (ev, top1) in enumerate(zip(evaluated, (60.0, 70.0), strict=True)):
        record = linear(top1, sha=f"{i}e" * 32)
        record["evaluated"] = ev
        records.append(record)
    again = linear(72.0, sha="2e" * 32)  # another seed of the finished run: pooled with it
    again["evaluated"] = {**evaluated[1], "pretraining": {**evaluated[1]["pretraining"], "seed": 5}}
    old = linear(74.0, sha="3e" * 32)  # a record written before records carried progress: the finished run
    old["evaluated"] = {k: v for k, v in again["evaluated"].items() if k != "pretraining_progress"}
    old["evaluated"]["pretraining"] = {**again["evaluated"]["pretraining"], "seed": 6}
    table = build_table([*records, again, old], rows="method")
    column = "CIFAR-10 linear (lbfgs) top-1"
    first, last = "MoCo-v2 resnet18, 1 of 2 ep of 64 images", "MoCo-v2 resnet18, 2 ep of 64 images"
    assert [r.label for r in table.rows] == [first, last]
    assert cell(table, first, column).values == [60.0]
    assert sorted(cell(table, last, column).values) == [70.0, 72.0, 74.0]
