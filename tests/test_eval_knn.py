import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mochi.errors import ConfigError, MochiError
from mochi.eval import knn
from mochi.eval.knn import classification_metrics, knn_classify, knn_vote, search


def test_vote_equals_direct_formula():
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(7, 12, generator=g).sort(dim=1, descending=True).values
    labels = torch.randint(0, 4, (7, 12), generator=g)
    for k, t in ((1, 0.07), (5, 0.1), (12, 1.0)):
        scores = knn_vote(sims, labels, 4, k, t)
        for q in range(7):
            for c in range(4):
                direct = sum(np.exp(sims[q, i].item() / t) for i in range(k) if labels[q, i] == c)
                assert scores[q, c].item() == pytest.approx(direct, rel=1e-9)


def _bank(n=400, q=37, d=32, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d))
    y_tr, y_te = rng.integers(0, classes, n), rng.integers(0, classes, q)
    x_tr = centers[y_tr] + rng.normal(size=(n, d))
    x_te = centers[y_te] + rng.normal(size=(q, d))
    return x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te


def test_faiss_and_torch_agree_with_fewer_than_100_queries(monkeypatch):
    x_tr, y_tr, x_te, y_te = _bank()
    s_f, i_f = search(x_tr, x_te, 200, backend="faiss", device="cpu")
    s_t, i_t = search(x_tr, x_te, 200, backend="torch", device="cpu")
    assert s_f.shape == (37, 200) and np.allclose(s_f, s_t, atol=1e-5) and (i_f == i_t).all()
    monkeypatch.setattr(knn, "MAX_BLOCK", 400 * 3)  # 3 queries per chunk, last chunk partial
    s_c, i_c = search(x_tr, x_te, 200, backend="torch", device="cpu")
    assert (i_c == i_t).all()
    a = knn_classify(x_tr, y_tr, x_te, y_te, ks=(10, 20, 200), temperatures=(0.07, 0.5), backend="faiss")
    b = knn_classify(x_tr, y_tr, x_te, y_te, ks=(10, 20, 200), temperatures=(0.07, 0.5), backend="torch")
    assert a == b and a["headline"] == "k20_T0.07" and len(a["settings"]) == 6
    assert a["top1"] == a["settings"]["k20_T0.07"]["top1"] and a["top1"] > 60


def test_one_search_equals_a_search_per_k():
    x_tr, y_tr, x_te, y_te = _bank(seed=1)
    sweep = knn_classify(x_tr, y_tr, x_te, y_te, ks=(5, 50), temperatures=(0.07,), backend="torch")
    single = knn_classify(x_tr, y_tr, x_te, y_te, ks=(5,), temperatures=(0.07,), backend="torch")
    assert sweep["settings"]["k5_T0.07"] == single["settings"]["k5_T0.07"]


def test_meaningless_settings_are_clear_errors():
    x_tr, y_tr, x_te, y_te = _bank(n=50)
    with pytest.raises(ConfigError, match="200 exceeds the 50 training images") as err:
        knn_classify(x_tr, y_tr, x_te, y_te, ks=(10, 200))
    assert err.value.field == "ks"
    with pytest.raises(MochiError, match="single class"):
        knn_classify(x_tr, np.zeros(50, dtype=int), x_te, y_te, ks=(10,))
    with pytest.raises(ConfigError, match="needs every value positive, got 0.0") as err:
        knn_classify(x_tr, y_tr, x_te, y_te, ks=(10,), temperatures=(0.0,))
    assert err.value.field == "temperatures"


def test_metrics_few_classes_and_mean_per_class():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    m = classification_metrics(scores, torch.tensor([0, 1, 1, 1]), 2)
    assert (
        m["top1"] == 50.0
        and m["top5"] is None
        and m["mean_per_class"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    )


def test_openblas_core_type_only_set_with_avx2(monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.setattr(knn, "_cpu_has", lambda flag: False)
    assert knn._openblas_core_type() is None
    monkeypatch.setattr(knn, "_cpu_has", lambda flag: flag == "avx2")
    assert knn._openblas_core_type() == "Haswell"
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")  # a user's choice is kept
    assert knn._openblas_core_type() is None


def test_faiss_import_leaves_the_environment_as_it_was(monkeypatch):
    # The core type is set only while FAISS loads (it reads it once), then removed again.
    import os
    import sys

    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.setattr(knn, "_cpu_has", lambda flag: flag == "avx2")
    seen = {}

    class _Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "faiss":
                seen["during_import"] = os.environ.get("OPENBLAS_CORETYPE")
            return None

    monkeypatch.delitem(sys.modules, "faiss", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Finder(), *sys.meta_path])
    before = dict(os.environ)
    knn.import_faiss()
    assert seen["during_import"] == "Haswell"
    assert dict(os.environ) == before


def test_missing_faiss_falls_back_to_torch_with_a_notice(monkeypatch, caplog):
    monkeypatch.setattr(knn, "faiss_available", lambda: False)
    with caplog.at_level("WARNING"):
        assert knn.resolve_backend("faiss") == "torch"
    assert "FAISS is not installed" in caplog.text
    assert knn.resolve_backend("torch") == "torch"
    with pytest.raises(MochiError, match="unknown kNN backend 'annoy'"):
        knn.resolve_backend("annoy")


def test_unit_rows_is_one_normalised_float32_copy():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float16)
    out = knn.unit_rows(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous and not np.shares_memory(out, x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    ro = np.ones((2, 3), np.float32)
    ro.setflags(write=False)  # cached features are read-only memory maps
    np.testing.assert_allclose(np.linalg.norm(knn.unit_rows(ro), axis=1), [1, 1], rtol=1e-6)


def test_faiss_knn_gives_the_index_search_answers():
    # faiss.knn (no index copy of the bank) against the IndexFlatIP search it replaced
    faiss = knn.import_faiss()
    rng = np.random.default_rng(0)
    bank, queries = rng.standard_normal((3000, 32)).astype(np.float16), rng.standard_normal((200, 32))
    sims, ids = search(bank, queries, 40, backend="faiss", device="cpu")
    index = faiss.IndexFlatIP(32)
    index.add(F.normalize(torch.from_numpy(np.array(bank, np.float32)), dim=1).numpy())
    ref_sims, ref_ids = index.search(F.normalize(torch.from_numpy(queries).float(), dim=1).numpy(), 40)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_search_plan_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert knn.search_plan("faiss", "auto") == ("faiss", "cpu")
    assert knn.search_plan("torch", "auto") == ("torch", "cpu")


def test_search_plan_with_a_gpu_prefers_faiss_gpu_then_torch_on_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(knn, "_faiss_has_gpu", lambda faiss: False)
    assert knn.search_plan("faiss", "auto") == ("torch", "cuda")  # faiss-cpu only: torch on the GPU
    assert knn.search_plan("faiss", "cpu") == ("faiss", "cpu")
    monkeypatch.setattr(knn, "_faiss_has_gpu", lambda faiss: True)
    assert knn.search_plan("faiss", "auto") == ("faiss", "cuda")
