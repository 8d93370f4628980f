import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mochi.errors import ConfigError
from mochi.eval.backbones import load_eval_backbone
from mochi.eval.data import open_split
from mochi.eval.features import get_features
from mochi.eval.knn import knn_classify
from mochi.eval.linear import (
    BackboneChanged,
    LbfgsConfig,
    MocoLinearConfig,
    SgdGridConfig,
    auto_blas_threads,
    held_out_split,
    linear_lbfgs,
    linear_moco,
    linear_sgd_grid,
    moco_train_transform,
    train_linear_heads,
)
from mochi.transforms import eval_transform

TF, SPEC = eval_transform(32)


@pytest.fixture(scope="module")
def feats():
    """Random-init ResNet-18 features of 400 / 150 real Fashion-MNIST images (10 classes)."""
    bb = load_eval_backbone(random_init=True, arch="resnet18")
    out = []
    for split, n in (("train", 400), ("test", 150)):
        ds = open_split("fashion-mnist-embedded", split, transform=TF, limit=n)
        out.append(get_features(bb, ds, transform_spec=SPEC, cache=None, batch_size=100))
    return out


def test_heads_step_is_sgd_on_cross_entropy():
    x, y = torch.randn(50, 8), torch.randint(0, 3, (50,))
    w, b = train_linear_heads(
        x, y, 3, torch.tensor([0.1, 1.0]), torch.tensor([0.0, 0.0]), epochs=1, batch_size=50, momentum=0.0
    )
    w_ref, b_ref = torch.zeros(3, 8, requires_grad=True), torch.zeros(3, requires_grad=True)
    F.cross_entropy(x @ w_ref.T + b_ref, y).backward()
    for h, lr in enumerate((0.1, 1.0)):
        assert torch.allclose(w[h], -lr * 50 / 256 * w_ref.grad, atol=1e-6)
        assert torch.allclose(b[h], -lr * 50 / 256 * b_ref.grad, atol=1e-6)


def test_held_out_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), 10)
    tr, va = held_out_split(labels, 0.2, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 40
    assert np.bincount(labels[va]).tolist() == [2, 2, 2, 2]


def test_cached_protocols_beat_chance_clearly(feats):
    train, test = feats
    knn = knn_classify(train.features, train.labels, test.features, test.labels, ks=(10, 20), backend="torch")
    sgd, sgd_d = linear_sgd_grid(
        train.features, train.labels, test.features, test.labels, SgdGridConfig(epochs=10)
    )
    lb, lb_d = linear_lbfgs(
        train.features, train.labels, test.features, test.labels, LbfgsConfig(c_values=(1e-3, 1e-2, 1e-1))
    )
    assert knn["top1"] > 40 and sgd["top1"] > 40 and lb["top1"] > 40  # chance: 10
    assert sgd_d["best_lr"] in SgdGridConfig().lrs and lb_d["best_C"] in (1e-3, 1e-2, 1e-1)


def test_lbfgs_refit_reaches_the_cold_start_optimum(feats):
    from sklearn.linear_model import LogisticRegression

    train, test = feats
    metrics, details = linear_lbfgs(
        train.features, train.labels, test.features, test.labels, LbfgsConfig(c_values=(0.1,), max_iter=5000)
    )
    mean, std = train.features.mean(0), train.features.std(0, ddof=1).clip(1e-6)
    cold = LogisticRegression(C=0.1, max_iter=5000).fit((train.features - mean) / std, train.labels)
    direct = 100 * (cold.predict((test.features - mean) / std) == test.labels).mean()
    assert details["best_C"] == 0.1 and abs(metrics["top1"] - direct) < 1.0  # 1 image of 150 = 0.67


def test_auto_blas_threads_uses_one_thread_for_small_problems():
    assert auto_blas_threads(1000, 512) == 1
    assert auto_blas_threads(8000, 2048) == 1
    assert auto_blas_threads(10_000, 2048) is None  # library default: every core
    assert auto_blas_threads(1_281_167, 2048) is None


@pytest.mark.parametrize("requested, expected", [(0, 1), (2, 2)])
def test_lbfgs_fits_run_under_the_blas_thread_limit(feats, monkeypatch, requested, expected):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    seen, fit, before = [], LogisticRegression.fit, blas_threads()

    def spy(self, *args, **kwargs):
        seen.append(blas_threads())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    train, test = feats
    _, details = linear_lbfgs(
        train.features, train.labels, test.features, test.labels,
        LbfgsConfig(c_values=(1e-2, 1e-1), blas_threads=requested),
    )  # fmt: skip
    assert len(seen) == 3 and all(s == {expected} for s in seen)  # two sweep fits and the refit
    assert details["blas_threads"] == expected
    assert blas_threads() == before  # the limit is lifted afterwards


def test_lbfgs_rejects_a_negative_thread_count(feats):
    train, test = feats
    with pytest.raises(ConfigError, match="must be 0 .auto. or a positive count, got -1") as err:
        linear_lbfgs(train.features, train.labels, test.features, test.labels, LbfgsConfig(blas_threads=-1))
    assert err.value.field == "blas_threads"


@pytest.fixture(scope="module")
def moco_data():
    train = open_split("fashion-mnist-embedded", "train", transform=moco_train_transform(32), limit=300)
    test = open_split("fashion-mnist-embedded", "test", transform=TF, limit=100)
    return train, test


def test_moco_protocol_beats_chance_and_keeps_backbone(moco_data):
    bb = load_eval_backbone(random_init=True, arch="resnet18")
    # Random init keeps BN statistics at (0, 1), which eval mode would use as is: measure them once
    # on data, as any pretrained backbone would have (else 4 epochs on 300 images learn little).
    for m in bb.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    bb.model.train()
    with torch.no_grad():
        bb.model(torch.stack([moco_data[1][i][0] for i in range(100)]))
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    cfg = MocoLinearConfig(epochs=4, lr=0.3, batch_size=50, lr_steps=(3,))
    metrics, details = linear_moco(bb, *moco_data, 10, cfg, seed=0)
    assert metrics["top1"] > 20 and details["backbone_unchanged"]  # chance: 10 (~30 measured)
    assert all(torch.equal(v, bb.model.state_dict()[k]) for k, v in before.items())  # caller's model intact


def test_moco_sanity_check_catches_a_changed_backbone(moco_data):
    bb = load_eval_backbone(random_init=True, arch="resnet18")

    def leak(model):
        model.layer1[0].bn1.running_mean += 1e-3

    cfg = MocoLinearConfig(epochs=1, batch_size=100)
    with pytest.raises(BackboneChanged, match="layer1.0.bn1.running_mean"):
        linear_moco(bb, *moco_data, 10, cfg, _train_hook=leak)


def test_lbfgs_patience_does_not_stop_on_the_flat_start_at_tiny_c():
    """At tiny C the (unpenalised) intercept decides alone: every image gets the majority class, for several
    C values in a row. A patience counted from there stopped the sweep at chance; it must go on to the
    optimum, and still stop early after it."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [300, 150, 150])
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    x = (centres[labels] + rng.normal(size=(600, 2))).astype(np.float32)
    test_labels = np.repeat([0, 1, 2], [100, 50, 50])
    x_test = (centres[test_labels] + rng.normal(size=(200, 2))).astype(np.float32)
    c_values = tuple(np.logspace(-6, 5, 45).tolist())
    full, _ = linear_lbfgs(x, labels, x_test, test_labels, LbfgsConfig(c_values=c_values))
    short, short_d = linear_lbfgs(x, labels, x_test, test_labels, LbfgsConfig(c_values=c_values, patience=3))
    assert full["top1"] > 80 and short["top1"] > 80, (full, short)  # majority class alone: 50
    assert 6 < short_d["c_tried"] < 45  # it stopped early, after the optimum
