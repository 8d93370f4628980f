"""Linear protocols on the same small data: sgd-grid and lbfgs (cached features) vs moco; JSON out.

    python benchmarks/bench_linear.py     # random-init ResNet-18, 32 px Fashion-MNIST subset, CPU
    python benchmarks/bench_linear.py --checkpoint runs/main/pretrain/moco-v2/checkpoint_0029.pth.tar \
        --moco-epochs 100

Wall time of each protocol includes its feature pass (extracted once, shared by sgd-grid and lbfgs; both
are charged the full pass); library imports (scikit-learn's takes about a second) happen before any
timing. ``moco`` runs the reference protocol with --moco-epochs (default 10: the
100-epoch reference is out of reach on CPU) and its time is reported both as measured and scaled to 100.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import sklearn.linear_model  # noqa: F401  (imported here, outside the lbfgs timing)
import torch

from mochi.eval.backbones import load_eval_backbone
from mochi.eval.data import open_split
from mochi.eval.features import get_features
from mochi.eval.linear import (
    LbfgsConfig,
    MocoLinearConfig,
    linear_lbfgs,
    linear_moco,
    linear_sgd_grid,
    moco_train_transform,
)
from mochi.io import atomic_write_json
from mochi.transforms import eval_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--moco-epochs", type=int, default=10)
    parser.add_argument(
        "--checkpoint", default=None, help="backbone to probe [default: random-init resnet18]"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tf, spec = eval_transform(32)

    def backbone():
        if args.checkpoint:
            return load_eval_backbone(args.checkpoint)
        return load_eval_backbone(random_init=True, arch="resnet18")

    bb = backbone()
    start = time.perf_counter()
    feats = [
        get_features(bb, open_split("fashion-mnist-embedded", s, transform=tf, limit=n), transform_spec=spec)
        for s, n in (("train", args.n_train), ("test", args.n_test))
    ]
    t_feat = time.perf_counter() - start
    (tr, te), rows = feats, {}
    for name, fn in (("sgd-grid", linear_sgd_grid), ("lbfgs", linear_lbfgs)):
        start = time.perf_counter()
        metrics, details = fn(tr.features, tr.labels, te.features, te.labels)
        rows[name] = {
            "top1": round(metrics["top1"], 2),
            "protocol_s": round(time.perf_counter() - start, 2),
            "wall_s_with_features": round(time.perf_counter() - start + t_feat, 2),
            "chosen": {k: v for k, v in details.items() if not isinstance(v, dict)},
        }
    train = open_split(
        "fashion-mnist-embedded", "train", transform=moco_train_transform(32), limit=args.n_train
    )
    test = open_split("fashion-mnist-embedded", "test", transform=tf, limit=args.n_test)
    cfg = MocoLinearConfig(
        epochs=args.moco_epochs, lr_steps=(round(0.6 * args.moco_epochs), round(0.8 * args.moco_epochs))
    )
    bb = backbone()
    start = time.perf_counter()
    metrics, _ = linear_moco(bb, train, test, 10, cfg)
    t_moco = time.perf_counter() - start
    rows["moco"] = {
        "top1": round(metrics["top1"], 2),
        "epochs": args.moco_epochs,
        "wall_s": round(t_moco, 2),
        "wall_s_scaled_to_100_epochs": round(t_moco * 100 / args.moco_epochs, 2),
    }
    for name in ("sgd-grid", "lbfgs"):
        rows[name]["speedup_vs_moco_100ep"] = round(
            rows["moco"]["wall_s_scaled_to_100_epochs"] / rows[name]["wall_s_with_features"], 1
        )
        rows[name]["top1_minus_moco"] = round(rows[name]["top1"] - rows["moco"]["top1"], 2)
    result = {
        "benchmark": "linear",
        "data": {"dataset": "fashion-mnist-embedded", "n_train": args.n_train, "n_test": args.n_test},
        "backbone": f"{args.checkpoint or 'random-init resnet18'}, 32 px",
        "lbfgs_patience": LbfgsConfig().patience,
        "feature_pass_s": round(t_feat, 2),
        "targets": {"speedup_vs_moco": ">= 20", "top1_minus_moco": ">= -0.5"},
        "results": rows,
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
    }
    default = "linear_cpu_pretrained.json" if args.checkpoint else "linear_cpu.json"
    out = Path(args.out or Path(__file__).parent / "results" / default)
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
