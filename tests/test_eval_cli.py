import json

from click.testing import CliRunner

from mochi.cli import main
from mochi.eval.records import format_table, load_records

COMMON = [
    "--random-init", "-a", "resnet18", "--data", "fashion-mnist-embedded", "--image-size", "32",
    "--limit-train", "200", "--limit-test", "60", "-b", "100", "-q",
]  # fmt: skip


def test_knn_linear_records_and_results_table(tmp_path):
    runner = CliRunner()
    res, cache = str(tmp_path / "results"), ["--cache-dir", str(tmp_path / "cache")]
    out = runner.invoke(main, ["knn", *COMMON, *cache, "-o", res, "-k", "5,20", "-t", "0.07,0.1"])
    assert out.exit_code == 0, out.output
    assert "k=20   T=0.07" in out.output
    out = runner.invoke(
        main, ["linear", *COMMON, *cache, "-o", res, "--protocol", "lbfgs", "--c-values", "0.01,0.1"]
    )
    assert out.exit_code == 0, out.output
    out = runner.invoke(
        main, ["linear", *COMMON, *cache, "-o", res, "--protocol", "sgd-grid", "--epochs", "3"]
    )
    assert out.exit_code == 0, out.output
    records = load_records(res)
    assert [r["task"] for r in records] == ["knn", "linear", "linear"]
    assert [r["protocol"] for r in records] == ["knn-weighted-vote", "lbfgs", "sgd-grid"]
    knn = records[0]
    assert set(knn["metrics"]["settings"]) == {"k5_T0.07", "k5_T0.1", "k20_T0.07", "k20_T0.1"}
    assert knn["metrics"]["headline"] == "k20_T0.07" and knn["data"]["features"]["cached"] == [False, False]
    assert knn["evaluated"] == {
        "checkpoint": None, "random_init": True, "label": "random-init resnet18", "arch": "resnet18",
        "stem": "standard", "seed": 0,
    }  # fmt: skip
    assert records[1]["data"]["features"]["cached"] == [True, True]  # one feature pass shared
    assert records[1]["data"]["train"]["num_images"] == 200 and "sklearn" in records[1]["versions"]
    assert records[2]["hyperparameters"]["epochs"] == 3
    assert json.loads(json.dumps(records)) == records
    out = runner.invoke(main, ["results", res])
    assert out.exit_code == 0 and out.output.count("random-init resnet18") == 3
    assert format_table(records).splitlines()[0].startswith("id")


def test_failed_run_writes_nothing(tmp_path):
    res = tmp_path / "results"
    out = CliRunner().invoke(main, ["knn", *COMMON, "--no-cache", "-o", str(res), "-k", "500"])
    assert out.exit_code == 1 and "exceeds the 200 training images" in out.output
    assert not res.exists()
    out = CliRunner().invoke(main, ["knn", "--data", "fashion-mnist-embedded", "-o", str(res)])
    assert out.exit_code == 1 and "--random-init" in out.output


def test_checkpoint_record_names_hash_and_encoder(tmp_path):
    import torch
    import torchvision

    sd = {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    ckpt = tmp_path / "moco" / "checkpoint_0001.pth.tar"
    ckpt.parent.mkdir()
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": sd}, ckpt)
    res = tmp_path / "results"
    args = ["knn", str(ckpt), *COMMON[3:], "--no-cache", "-o", str(res), "-k", "10", "--backend", "torch"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    ev = load_records(res)[0]["evaluated"]
    assert (
        ev["encoder"] == "query" and len(ev["sha256"]) == 64 and ev["label"] == "moco/checkpoint_0001.pth.tar"
    )


def test_default_k_list_trimmed_to_a_small_training_set(tmp_path):
    res = CliRunner().invoke(main, ["knn", "--random-init", "-a", "resnet18", "--small-stem", "--data",
                                    "fashion-mnist-embedded", "--image-size", "32", "--limit-train", "50",
                                    "--limit-test", "20", "-q", "--cache-dir", str(tmp_path / "c"),
                                    "-o", str(tmp_path / "r")])  # fmt: skip
    assert res.exit_code == 0, res.output
    printed = [line.split()[0] for line in res.output.splitlines() if line.startswith("k=")]
    assert printed == ["k=10", "k=20"]
    (record,) = load_records(tmp_path / "r")
    assert record["hyperparameters"]["k"] == [10, 20]
