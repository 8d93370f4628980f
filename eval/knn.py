"""kNN classification with the InstDisc weighted vote (docs/protocols.md#knn-classification).

For each test feature, the top-k training features by cosine similarity ``s_i`` vote with weight
``exp(s_i / T)`` for their class; the prediction is the arg-max class score, top-5 the five best.
One search for ``max(k)`` neighbours serves every ``k`` and every ``T`` (the neighbours are sorted, so
the top-k are the first ``k`` columns; ``T`` only re-weights them).

Search backends return the same ``(sims, ids)``: ``faiss`` (exact inner product, ``IndexFlatIP``; a GPU
index when a FAISS GPU build and a GPU are present) and ``torch`` (chunked matrix products + topk, on GPU
when available).

The defaults (DINO ``eval_knn.py``: k = 10, 20, 100, 200; T = 0.07; headline k = 20, T = 0.07) are in
:mod:`mochi.eval.config`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mochi.errors import ConfigError, MochiError

from .config import BACKENDS, DEFAULT_KS, DEFAULT_TEMPERATURES, HEADLINE, KnnConfig  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

# Bound on one query chunk's similarity block (floats): 2^27 floats = 512 MiB at float32.
MAX_BLOCK = 1 << 27


def setting_name(k: int, temperature: float) -> str:
    """The metrics key of one setting, e.g. ``k20_T0.07``."""
    return f"k{k}_T{temperature:g}"


# ---------------------------------------------------------------------------------------------------------
# The vote (pure)


def knn_vote(
    sims: torch.Tensor, labels: torch.Tensor, n_classes: int, k: int, temperature: float
) -> torch.Tensor:
    """Class scores ``(Q, C)`` of the weighted vote.

    ``sims: (Q, K) `` cosine similarities of each query's neighbours sorted descending, K >= k;
    ``labels: (Q, K)`` their class indices. Score ``p_c = Σ_{i<k} exp(s_i / T)·[y_i = c]``.
    """
    if k > sims.shape[1]:
        raise ValueError(f"k={k} exceeds the {sims.shape[1]} neighbours searched")
    weights = (sims[:, :k].double() / temperature).exp()
    scores = torch.zeros(sims.shape[0], n_classes, dtype=torch.float64, device=sims.device)
    return scores.scatter_add_(1, labels[:, :k].long(), weights)


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor, n_classes: int) -> dict[str, Any]:
    """``top1``, ``top5`` (None with 5 or fewer classes: it would be trivially 100) and ``mean_per_class``
    (mean over the classes present in ``targets`` of their recall), all in percent."""
    targets = targets.long().to(scores.device)
    pred = scores.argmax(dim=1)
    correct = pred == targets
    out: dict[str, Any] = {"top1": 100.0 * correct.double().mean().item()}
    if n_classes > 5:
        top5 = scores.topk(5, dim=1).indices
        out["top5"] = 100.0 * (top5 == targets[:, None]).any(dim=1).double().mean().item()
    else:
        out["top5"] = None
    per_class = [correct[targets == c].double().mean().item() for c in targets.unique().tolist()]
    out["mean_per_class"] = 100.0 * float(np.mean(per_class))
    return out


# ---------------------------------------------------------------------------------------------------------
# Search backends


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return flag in line.split()
    except OSError:
        pass
    return False


def _openblas_core_type() -> str | None:
    """``Haswell`` when the user has not chosen a core type and the CPU has AVX2, else None."""
    if "OPENBLAS_CORETYPE" not in os.environ and _cpu_has("avx2"):
        return "Haswell"
    return None


def import_faiss():
    """Import FAISS (the only place that does), working around its bundled OpenBLAS's CPU detection.

    That OpenBLAS misreads some virtual CPUs as an old core type and runs several times slower; when the
    user has not chosen a core type and the CPU has AVX2, it is told "Haswell" while the library loads
    (the variable is read once, at load) and the environment is restored afterwards. A type the CPU
    lacks would crash, so nothing is set without AVX2.
    """
    core_type = _openblas_core_type() if "faiss" not in sys.modules else None
    faiss_logger = logging.getLogger("faiss.loader")
    level = faiss_logger.level
    faiss_logger.setLevel(logging.WARNING)  # its INFO lines are noise for users
    if core_type is not None:
        os.environ["OPENBLAS_CORETYPE"] = core_type
    try:
        import faiss
    except ImportError:
        raise MochiError(
            "the faiss backend needs FAISS: pip install faiss-cpu (or mochi-ssl[gpu]), or use --backend torch"
        ) from None
    finally:
        faiss_logger.setLevel(level)
        if core_type is not None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
    return faiss


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def resolve_backend(backend: str) -> str:
    """The backend that will search: ``faiss`` falls back to ``torch`` (with a one-line notice) when FAISS
    is not installed; an unknown name is an error."""
    if backend not in BACKENDS:
        raise MochiError(f"unknown kNN backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "faiss" and not faiss_available():
        logger.warning("FAISS is not installed: searching with the torch backend (pip install faiss-cpu)")
        return "torch"
    return backend


def _faiss_has_gpu(faiss) -> bool:
    return hasattr(faiss, "knn_gpu") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _faiss_search(train: np.ndarray, queries: np.ndarray, kmax: int, device: str) -> tuple[np.ndarray, ...]:
    # faiss.knn searches the bank as it is: no index object, so no second copy of the bank.
    faiss = import_faiss()
    if device == "cuda":
        return faiss.knn_gpu(
            faiss.StandardGpuResources(), queries, train, kmax, metric=faiss.METRIC_INNER_PRODUCT
        )
    return faiss.knn(queries, train, kmax, metric=faiss.METRIC_INNER_PRODUCT)


def search_plan(backend: str, device: str = "auto") -> tuple[str, str]:
    """``(backend, device)`` that will actually search, for ``--backend`` / ``--device`` as given.

    ``faiss`` uses FAISS's GPU build on a GPU when both are there; with a GPU but a CPU-only FAISS the torch
    backend searches on the GPU instead (far faster than FAISS on the CPU); without FAISS, torch searches
    (with a one-line notice). ``device``: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.
    """
    backend = resolve_backend(backend)
    gpu = device != "cpu" and torch.cuda.is_available()
    if backend == "torch":
        return "torch", "cuda" if gpu else "cpu"
    if not gpu:
        return "faiss", "cpu"
    if _faiss_has_gpu(import_faiss()):
        return "faiss", "cuda"
    logger.info("FAISS has no GPU support here: searching with torch on the GPU (mochi-ssl[gpu] adds it)")
    return "torch", "cuda"


def _torch_search(
    train: torch.Tensor, queries: torch.Tensor, kmax: int, device: torch.device
) -> tuple[np.ndarray, ...]:
    train = train.to(device)
    chunk = max(1, min(len(queries), MAX_BLOCK // max(1, len(train))))
    sims, ids = [], []
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk].to(device) @ train.T
        s, i = block.topk(kmax, dim=1)
        sims.append(s.cpu())
        ids.append(i.cpu())
    return torch.cat(sims).numpy(), torch.cat(ids).numpy()


def unit_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """One float32 copy of ``x: (N, D)`` with its rows scaled to unit length in place (zero rows stay zero).

    One copy is needed anyway (cached features are read-only memory maps, possibly float16); normalising it
    in place adds only the (N, 1) norms.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    out = np.array(x, dtype=np.float32, copy=True, order="C")
    rows = torch.from_numpy(out)  # shares memory with out
    rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-12))  # F.normalize's arithmetic, in place
    return out


def search(
    train: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    kmax: int,
    backend: str = "faiss",
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``kmax`` nearest training rows of each query by cosine similarity.

    ``train: (N, D)``, ``queries: (Q, D)``, any float dtype (L2-normalised here, in float32).
    Returns ``sims: (Q, kmax)`` float32 sorted descending and ``ids: (Q, kmax)`` int64.
    """
    backend, device = search_plan(backend, device)
    train_u, query_u = unit_rows(train), unit_rows(queries)
    if backend == "faiss":
        sims, ids = _faiss_search(train_u, query_u, kmax, device)
    else:
        sims, ids = _torch_search(
            torch.from_numpy(train_u), torch.from_numpy(query_u), kmax, torch.device(device)
        )
    return np.ascontiguousarray(sims, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------
# The protocol


def usable_ks(ks: Sequence[int], n_train: int, *, default: bool) -> tuple[int, ...]:
    """``ks`` as given; the default list is trimmed to the k a training set of ``n_train`` allows (with a
    notice), while a list the user chose is kept as is (:func:`check_settings` then names the problem)."""
    ks = tuple(ks)
    if default and max(ks) > n_train:
        kept = tuple(k for k in ks if k <= n_train) or (n_train,)
        logger.warning(
            "the training split holds %d images: using k = %s of the default %s",
            n_train, ",".join(map(str, kept)), ",".join(map(str, ks)),
        )  # fmt: skip
        return kept
    return ks


def check_settings(ks: Sequence[int], temperatures: Sequence[float], n_train: int, n_classes: int) -> None:
    if not ks or not temperatures:
        raise ConfigError("ks" if not ks else "temperatures", "needs at least one value")
    if min(ks) < 1:
        raise ConfigError("ks", f"needs every value positive, got {', '.join(map(str, sorted(ks)))}")
    if min(temperatures) <= 0:
        raise ConfigError(
            "temperatures", f"needs every value positive, got {', '.join(map(str, sorted(temperatures)))}"
        )
    if max(ks) > n_train:
        raise ConfigError(
            "ks", f"{max(ks)} exceeds the {n_train} training images: pass values of at most {n_train}"
        )
    if n_classes < 2:
        raise MochiError("the training split holds a single class: classification accuracy is meaningless")


def knn_classify(
    train_features: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_features: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    backend: str = "faiss",
    device: str = "auto",
    n_classes: int | None = None,
) -> dict[str, Any]:
    """kNN metrics for every (k, T) from one ``max(k)`` search.

    Returns ``{"top1", "top5", "mean_per_class"}`` of the headline setting (k=20, T=0.07 when requested,
    else the first k and T) plus ``"settings": {"k20_T0.07": {...}, ...}`` for every pair and
    ``"headline": "k20_T0.07"``.
    """
    train_labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    test_labels = torch.as_tensor(np.asarray(test_labels), dtype=torch.long)
    if n_classes is None:
        n_classes = int(max(train_labels.max().item(), test_labels.max().item())) + 1
    check_settings(ks, temperatures, len(train_labels), int(train_labels.unique().numel()))
    kmax = max(ks)
    sims, ids = search(train_features, test_features, kmax, backend=backend, device=device)
    sims_t = torch.from_numpy(sims)
    neighbour_labels = train_labels[torch.from_numpy(ids)]
    settings: dict[str, Any] = {}
    for k in sorted(set(ks)):
        for t in temperatures:
            scores = knn_vote(sims_t, neighbour_labels, n_classes, k, t)
            settings[setting_name(k, t)] = classification_metrics(scores, test_labels, n_classes)
    headline = setting_name(*HEADLINE)
    if headline not in settings:
        headline = setting_name(ks[0], temperatures[0])
    return {**settings[headline], "headline": headline, "settings": settings}
