"""Statistics of the negatives and the class oracle, against direct counts on crafted tensors.

Protocol: docs/protocols.md#negatives-during-pretraining.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mochi.pretrain.losses import contrastive_loss, mix_hard_negatives, moco_logits
from mochi.pretrain.moco import MochiParams, MoCo
from mochi.pretrain.negatives import (
    hard_false_negatives,
    negative_stats,
    oracle_mask,
    positive_rank,
    queue_false_negatives,
    ratios,
    same_class,
    synthetic_from_false_negatives,
)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# 4 queries, 10 queue entries; -1 = unknown (never a match, neither for a query nor for an entry).
LABELS = torch.tensor([0, 1, 2, -1])
QUEUE_LABELS = torch.tensor([0, 0, 1, -1, 2, 0, -1, 1, 3, 0])


def test_same_class_and_oracle_mask_remove_exactly_the_known_same_class_entries():
    mask = same_class(LABELS, QUEUE_LABELS)
    for b in range(4):
        for j in range(10):
            expected = LABELS[b] >= 0 and QUEUE_LABELS[j] >= 0 and LABELS[b] == QUEUE_LABELS[j]
            assert bool(mask[b, j]) == bool(expected)
    l_neg = torch.randn(4, 10)
    masked = oracle_mask(l_neg, LABELS, QUEUE_LABELS)
    assert torch.equal(torch.isinf(masked), mask) and (masked[mask] < 0).all()
    assert torch.equal(masked[~mask], l_neg[~mask])  # nothing else touched
    assert mask.sum() == 4 + 2 + 1  # class 0: 4 entries, class 1: 2, class 2: 1; the unknown query: none


def test_positive_rank_counts_negatives_strictly_above_the_positive():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, -1.0, 2.0], [1.0, 1.0, 0.5, float("-inf")]])
    assert positive_rank(logits).tolist() == [0, 2, 0]  # a tie does not outrank; -inf never does


def test_queue_false_negative_counts_equal_a_direct_count():
    same, known = queue_false_negatives(LABELS, QUEUE_LABELS)
    direct_same = [sum(int(q >= 0 and e == q) for e in QUEUE_LABELS.tolist()) for q in LABELS.tolist()]
    direct_known = [sum(int(q >= 0 and e >= 0) for e in QUEUE_LABELS.tolist()) for q in LABELS.tolist()]
    assert direct_same == [4, 2, 1, 0] and direct_known == [8, 8, 8, 0]
    assert same.item() == pytest.approx(sum(direct_same) / 4)
    assert known.item() == pytest.approx(sum(direct_known) / 4)
    assert ratios({"fn_queue_same": same.item(), "fn_queue_known": known.item()}) == {
        "fn_rate_queue": pytest.approx(7 / 24)
    }


def test_hard_false_negative_rate_equals_a_direct_count_on_a_crafted_queue():
    # Similarities chosen so each query's 3 hardest entries are known: the rate is a count of those.
    sim = torch.zeros(4, 10)
    hardest = [[0, 1, 2], [2, 7, 3], [9, 8, 4], [0, 2, 4]]
    for b, idx in enumerate(hardest):
        for rank, j in enumerate(idx):
            sim[b, j] = 1.0 - 0.1 * rank
    hard_idx = sim.topk(3, dim=1).indices
    assert hard_idx.tolist() == hardest
    fn = hard_false_negatives(LABELS, QUEUE_LABELS, hard_idx)
    # query 0 (class 0): entries 0, 1 are class 0, 2 is class 1; query 1: 2, 7 class 1, 3 unknown;
    # query 2: only entry 4 is class 2; query 3 has no label: nothing counts.
    assert fn.tolist() == [[True, True, False], [True, True, False], [False, False, True], [False] * 3]
    logits = torch.cat([torch.full((4, 1), 2.0), sim], dim=1)
    stats = negative_stats(logits, 10, 0.2, LABELS, QUEUE_LABELS, hard_idx)
    rate = ratios({k: v.item() for k, v in stats.items()})["fn_rate_hard"]
    assert rate == pytest.approx((2 + 2 + 1) / (3 + 2 + 3))  # entry 3 of query 1's set is unknown


def test_synthetic_points_from_false_negatives_equal_a_direct_count():
    fn = torch.tensor([[True, False, False], [False, False, True]])
    pair_i = torch.tensor([[0, 1], [1, 0]])
    pair_j = torch.tensor([[1, 2], [2, 1]])
    neg_j = torch.tensor([[0, 2, 1], [2, 2, 0]])
    from_fn = synthetic_from_false_negatives(fn, pair_i, pair_j, neg_j)
    for b in range(2):
        for p in range(2):  # type 1: either source
            assert from_fn[b, p] == (fn[b, pair_i[b, p]] or fn[b, pair_j[b, p]])
        for p in range(3):  # type 2: its negative
            assert from_fn[b, 2 + p] == fn[b, neg_j[b, p]]
    assert from_fn.tolist() == [[True, False, True, False, False], [True, False, True, True, False]]


def test_synthetic_harder_and_percentiles_equal_direct_values():
    b, k, s, t = 6, 12, 5, 0.2
    logits = torch.randn(b, 1 + k + s, generator=torch.Generator().manual_seed(0))
    stats = negative_stats(logits, k, t)
    hardest = logits[:, 1 : 1 + k].max(dim=1).values
    harder = sum(int(logits[i, 1 + k + j] > hardest[i]) for i in range(b) for j in range(s))
    assert stats["syn_harder"].item() == pytest.approx(harder / (b * s))
    ranks = [sum(int(x > logits[i, 0]) for x in logits[i, 1:].tolist()) for i in range(b)]
    assert stats["pos_rank"].item() == pytest.approx(np.mean(ranks))
    for name, values in (
        ("pos_sim", logits[:, 0] * t),
        ("hardest_sim", hardest * t),
        ("syn_sim", logits[:, 1 + k :] * t),
    ):
        for p in (10, 50, 90):
            expected = np.percentile(values.numpy().reshape(-1), p)
            assert stats[f"{name}_p{p}"].item() == pytest.approx(expected, abs=1e-6)
    assert not {"fn_queue_same", "syn_fn"} & set(stats)  # no labels: no label statistics


def test_a_rate_with_nothing_labelled_seen_is_left_out():
    assert ratios({"fn_hard_same": 0.0, "fn_hard_known": 0.0, "loss": 1.0}) == {"loss": 1.0}


def test_oracle_hard_set_never_holds_a_same_class_entry():
    b, k, d = 8, 40, 16
    q, queue = unit(b, d, seed=1), unit(k, d, seed=2)
    labels = torch.arange(b) % 4
    queue_labels = torch.arange(k) % 4
    masked = oracle_mask(q @ queue.T, labels, queue_labels)
    m = mix_hard_negatives(q, queue, 20, 6, 3, torch.Generator().manual_seed(0), sim=masked)
    assert not hard_false_negatives(labels, queue_labels, m.hard_idx).any()  # 30 others: N = 20 fits


def tiny(**kw):
    torch.manual_seed(0)
    defaults = dict(arch="resnet18", dim=16, queue_size=32, momentum=0.9, temperature=0.2, bn_splits=2)
    return MoCo(**{**defaults, **kw})


def images(b=8, seed=0):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_oracle_removes_exactly_the_same_class_logits_and_the_loss_follows():
    model = tiny(oracle=True).eval()  # eval: keys independent of the batch split
    model.queue_labels.copy_(torch.arange(32) % 5)
    model.queue_labels[::7] = -1  # some entries unknown: never removed
    ref = copy.deepcopy(model)
    x_q, x_k, labels = images(8, seed=1), images(8, seed=2), torch.tensor([0, 1, 2, 3, 4, 0, -1, 2])
    out = model(x_q, x_k, mix=False, labels=labels)

    with torch.no_grad():
        q = F.normalize(ref.encoder_q(x_q), dim=1)
        ref.momentum_update()
        k = F.normalize(ref.encoder_k(x_k), dim=1)
    queue, queue_labels = ref.queue.T, ref.queue_labels
    expected = []
    for i in range(8):
        kept = [
            j
            for j in range(32)
            if not (labels[i] >= 0 and queue_labels[j] >= 0 and labels[i] == queue_labels[j])
        ]
        neg = sum(math.exp(float(q[i] @ queue[j]) / 0.2) for j in kept)
        pos = math.exp(float(q[i] @ k[i]) / 0.2)
        expected.append(-math.log(pos / (pos + neg)))
    assert out["loss"].item() == pytest.approx(sum(expected) / 8, rel=1e-5)
    # Without the oracle the same step's loss is the full one, larger here.
    plain = contrastive_loss(moco_logits(q, k, queue, 0.2)).item()
    assert plain > out["loss"].item() + 1e-3
    assert torch.equal(model.queue_labels[:8], labels)  # enqueued with the keys


def test_under_the_oracle_no_synthetic_point_is_mixed_from_a_false_negative():
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    from_fn = []
    for oracle in (False, True):
        model = tiny(oracle=oracle, mochi=MochiParams(4, 6, 3), analysis_n=4).eval()
        model.queue_labels.copy_(torch.arange(32) % 5)
        out = model(images(8, seed=1), images(8, seed=2), True, torch.Generator().manual_seed(0), labels)
        from_fn.append(out["syn_fn"].item())
    assert from_fn[0] > 0 and from_fn[1] == 0  # same-class entries are kept out of every hard set


def test_the_oracle_needs_labels():
    with pytest.raises(ValueError, match="needs the labels"):
        tiny(oracle=True)(images(8, seed=1), images(8, seed=2))


@pytest.mark.parametrize("mochi", [None, MochiParams(4, 6, 3)])
def test_analysis_changes_neither_the_loss_nor_the_queue_nor_the_draws(mochi):
    outs, models, gens = [], [], []
    for analysis_n in (None, 8):
        model, gen = tiny(mochi=mochi, analysis_n=analysis_n).train(), torch.Generator().manual_seed(3)
        labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
        outs.append(
            [
                model(images(8, seed=s), images(8, seed=s + 1), mochi is not None, gen, labels)
                for s in (1, 2, 3)
            ]
        )
        models.append(model)
        gens.append(gen)
    for plain, logged in zip(*outs, strict=True):
        assert torch.equal(plain["loss"], logged["loss"])
    assert torch.equal(models[0].queue, models[1].queue)
    assert torch.equal(models[0].queue_labels, models[1].queue_labels)
    assert torch.equal(gens[0].get_state(), gens[1].get_state())
    assert {"pos_rank", "pos_sim_p50", "fn_hard_same", "fn_queue_known"} <= set(outs[1][-1])
    if mochi is not None:
        assert {"syn_harder", "syn_fn", "syn_sim_p50"} <= set(outs[1][-1])


def test_the_label_queue_follows_the_pointer_through_wrap_around():
    model = tiny().eval()
    for step in range(5):  # K = 32, batch 8: step 4 wraps to the start
        x_k = images(8, seed=10 + step)
        labels = torch.arange(8) + 100 * step  # a label per image, so its position is known
        ref = copy.deepcopy(model)
        ref.momentum_update()
        ptr = int(model.queue_ptr)
        model(images(8, seed=step), x_k, labels=labels)
        keys = F.normalize(ref.encoder_k(x_k), dim=1)
        torch.testing.assert_close(model.queue[:, ptr : ptr + 8].T, keys, rtol=0, atol=1e-6)
        assert torch.equal(model.queue_labels[ptr : ptr + 8], labels)
    expected = torch.cat([torch.arange(8) + 100 * s for s in (4, 1, 2, 3)])
    assert torch.equal(model.queue_labels, expected) and int(model.queue_ptr) == 8
    model(images(8, seed=9), images(8, seed=9))  # a batch without labels enqueues unknowns
    assert (model.queue_labels[8:16] == -1).all()


def _unlabelled_stl10(root):
    """A tiny STL-10 ``unlabeled`` split: 64 random 96x96 images, no labels at all."""
    folder = root / "stl10_binary"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 3, 96, 96), dtype=np.uint8)
    (folder / "unlabeled_X.bin").write_bytes(pixels.tobytes())
    return root


TINY_RUN = ["pretrain", "-a", "resnet18", "--image-size", "32", "--aug", "aug-plus-small", "-b", "32",
            "--moco-k", "64", "-j", "0", "--epochs", "1", "--log-every", "1", "-q"]  # fmt: skip


def test_the_oracle_without_labels_stops_before_training_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from mochi.cli import main

    root, out = _unlabelled_stl10(tmp_path), tmp_path / "run"
    args = [*TINY_RUN, "--data", "stl10", "--data-root", str(root), "--split", "unlabeled", "-o", str(out)]
    res = CliRunner().invoke(main, [*args, "--oracle"])
    assert res.exit_code != 0
    assert "--oracle needs class labels, and stl10 (split unlabeled) has none" in res.output
    assert not out.exists()


@pytest.mark.slow  # three one-epoch runs of 2 steps
def test_runs_log_the_statistics_their_data_allows_and_no_analysis_logs_none(tmp_path):
    import json

    from click.testing import CliRunner

    from mochi.cli import main

    def epoch_record(*args):
        out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        res = CliRunner().invoke(main, [*TINY_RUN, *args, "-o", str(out)])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return rows[-1], json.loads((out / "config.json").read_text())["config"]

    root = _unlabelled_stl10(tmp_path)
    unlabelled, _ = epoch_record("--data", "stl10", "--data-root", str(root), "--split", "unlabeled")
    assert {"pos_rank", "pos_sim_p50", "hardest_sim_p90"} <= set(unlabelled)
    assert not [k for k in unlabelled if k.startswith("fn_")]  # no labels: no made-up rates
    labelled, config = epoch_record("--data", "fashion-mnist-embedded", "--limit", "64", "--oracle")
    assert config["oracle"] is True and config["analysis"] is True
    assert 0 <= labelled["fn_rate_queue"] <= 1 and "fn_queue_same" not in labelled  # counts became a rate
    silent, config = epoch_record("--data", "fashion-mnist-embedded", "--limit", "64", "--no-analysis")
    assert config["analysis"] is False
    assert not {"pos_rank", "fn_rate_queue", "pos_sim_p50"} & set(silent)


@pytest.mark.slow  # two one-epoch runs of 2 steps
def test_a_checkpoint_without_the_label_queue_still_resumes(tmp_path):
    from click.testing import CliRunner

    from mochi.cli import main

    out = tmp_path / "run"
    args = [*TINY_RUN, "--data", "fashion-mnist-embedded", "--limit", "64", "--epochs", "2", "-o", str(out)]
    res = CliRunner().invoke(main, [*args, "--stop-after", "1"])
    assert res.exit_code == 0, res.output
    path = out / "checkpoint_0000.pth.tar"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["module.queue_labels"]  # as written before the label queue existed
    torch.save(ckpt, path)
    res = CliRunner().invoke(main, [*args, "--resume", "auto"])
    assert res.exit_code == 0, res.output
    resumed = torch.load(out / "checkpoint_0001.pth.tar", weights_only=True)["state_dict"]
    labels = resumed["module.queue_labels"]
    # The resumed epoch enqueued 64 labelled keys over the unknown ones: K = 64, all known again.
    assert labels.shape == (64,) and (labels >= 0).all()
