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
