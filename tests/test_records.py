import json

import pytest

from mochi.errors import MochiError
from mochi.eval.records import SCHEMA, format_table, load_records, make_record, write_record


def rec(**kw):
    base = dict(
        task="knn",
        protocol="knn-weighted-vote",
        evaluated={
            "checkpoint": "runs/a/checkpoint_0001.pth.tar",
            "sha256": "ab",
            "arch": "resnet18",
            "encoder": "query",
        },
        data={"dataset": "fashion-mnist"},
        hyperparameters={"k": 20, "T": 0.07},
        metrics={"top1": 81.25, "top5": 99.0},
        seed=0,
        wall_time_s=1.5,
    )
    base.update(kw)
    return make_record(**base)


def test_records_round_trip_and_table(tmp_path):
    a, b = rec(), rec(metrics={"top1": 70.0, "top5": 95.5})
    pa, pb = write_record(tmp_path, a), write_record(tmp_path, b)
    assert json.loads(pa.read_text()) == a and pb.name == f"{b['id']}.json"
    back = load_records(tmp_path)
    assert {r["id"] for r in back} == {a["id"], b["id"]} and all(r["schema"] == SCHEMA for r in back)
    assert back[0]["versions"]["mochi"]
    table = format_table(back)
    assert "top1" in table.splitlines()[0] and "81.25" in table and "70.00" in table
    assert "checkpoint_0001.pth.tar" in table


def test_existing_record_is_never_overwritten(tmp_path):
    r = rec()
    p = write_record(tmp_path, r)
    before = p.read_text()
    with pytest.raises(MochiError, match="refusing to overwrite"):
        write_record(tmp_path, {**r, "metrics": {"top1": 0.0}})
    assert p.read_text() == before


def test_damaged_or_foreign_records(tmp_path):
    with pytest.raises(MochiError, match="lacks metrics"):
        write_record(tmp_path, {k: v for k, v in rec().items() if k != "metrics"})
    (tmp_path / "other.json").write_text('{"not": "a record"}')
    assert load_records(tmp_path) == []
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MochiError, match="broken.json"):
        load_records(tmp_path)


def test_records_made_in_the_same_second_keep_their_order(tmp_path):
    made = [rec(protocol=f"p{i}") for i in range(20)]
    for r in made:
        write_record(tmp_path, r)
    assert [r["protocol"] for r in load_records(tmp_path)] == [f"p{i}" for i in range(20)]


def _rec(**over):
    base = {
        "schema": "mochi.record/1", "id": "x", "created": "2026-01-01T00:00:00.000000Z", "task": "knn",
        "protocol": "knn-weighted-vote",
        "evaluated": {"checkpoint": "/a/ckpt.pth.tar", "sha256": "ab" * 32, "encoder": "query",
                      "prefix": "module.encoder_q.", "arch": "resnet18", "stem": "standard"},
        "data": {"dataset": "cifar10", "train": {"root": "/data/a", "split": "train"},
                 "test": {"root": "/data/a", "split": "test"}, "features": {"cached": [True, False]}},
        "hyperparameters": {"k": [20], "T": [0.07], "backend": "faiss", "search_device": "cpu"},
        "seed": None, "metrics": {"top1": 1.0},
    }  # fmt: skip
    for key, value in over.items():
        base[key] = value
    return base


def test_setting_key_ignores_location_cache_and_execution_only_settings():
    from mochi.eval.records import seed_of, setting_key

    a = _rec()
    moved = _rec(
        evaluated={**a["evaluated"], "checkpoint": "/elsewhere/copy.pth.tar"},
        data={**a["data"], "train": {"root": "/other", "split": "train"}, "features": {"cached": [0, 0]}},
        hyperparameters={**a["hyperparameters"], "backend": "torch", "search_device": "cuda"},
    )
    assert setting_key(a) == setting_key(moved)
    # what changes the number changes the key
    assert setting_key(a) != setting_key(_rec(hyperparameters={**a["hyperparameters"], "T": [0.1]}))
    assert setting_key(a) != setting_key(_rec(evaluated={**a["evaluated"], "sha256": "cd" * 32}))
    assert setting_key(a) != setting_key(_rec(evaluated={**a["evaluated"], "encoder": "key"}))
    assert setting_key(a) != setting_key(_rec(data={**a["data"], "dataset": "cifar100"}))
    assert setting_key(a) != setting_key(_rec(protocol="other"))
    # A grid computed by two NumPy releases (the last bit differs) is one setting; another grid is not.
    grid = {**a["hyperparameters"], "c_values": [1e-06, 1.778279410038923e-06]}
    other_numpy = {**a["hyperparameters"], "c_values": [1e-06, 1.7782794100389227e-06]}
    assert setting_key(_rec(hyperparameters=grid)) == setting_key(_rec(hyperparameters=other_numpy))
    coarser = {**a["hyperparameters"], "c_values": [1e-06, 1.8e-06]}
    assert setting_key(_rec(hyperparameters=grid)) != setting_key(_rec(hyperparameters=coarser))
    # random-init: the init seed is a seed of the cell, not a different backbone
    r0 = _rec(evaluated={"random_init": True, "arch": "resnet18", "stem": "standard", "seed": 0})
    r1 = _rec(evaluated={"random_init": True, "arch": "resnet18", "stem": "standard", "seed": 1})
    assert setting_key(r0) == setting_key(r1) and seed_of(r0) != seed_of(r1)
    assert seed_of(moved) == seed_of(a) and setting_key(r0) != setting_key(a)
    assert seed_of(_rec(seed=1)) != seed_of(_rec(seed=2))
