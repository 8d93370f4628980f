"""A MoCo-v2 training loop around the official model definition, for whole-process timing only.

The model (``moco.builder.MoCo``), the two-crop wrapper and the blur (``moco.loader``) are imported from a
checkout of the official repository given with ``--reference`` (facebookresearch/moco; nothing of it is
copied here). The loop does what the official ``main_moco.py`` does per step: SGD on the InfoNCE loss, the
loss and the top-1/top-5 proxy accuracy read back to the host every step (``.item()``), and a checkpoint of
model + optimizer at the end. Images come from the same embedded Fashion-MNIST subset as ``mochi pretrain``
(the first ``--images`` of the training split, PIL RGB, the official aug+ list built with torchvision).

The official model is written for GPUs and one process per GPU: it shuffles the batch across processes
(``torch.distributed``) and moves two small tensors with ``.cuda()``. Here a one-process gloo group stands in
for the process group and ``Tensor.cuda`` returns the tensor unchanged, so the official ``forward`` runs on
the CPU unmodified. With one process its shuffle-BN is one BN group over the whole batch (``mochi pretrain
--bn-splits 1``).

Prints one JSON line: images, steps, loop seconds (first step to last), startup and checkpoint seconds.
Run through ``benchmarks/bench_pretrain_reference.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

T_START = time.perf_counter()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision import models  # noqa: E402

from mochi.data import load_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--reference", required=True, help="checkout of facebookresearch/moco (holds moco/builder.py)"
    )
    p.add_argument("--images", type=int, default=1920)
    p.add_argument("-a", "--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--moco-k", type=int, default=4096)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-blur", action="store_true")
    p.add_argument("--print-freq", type=int, default=10)
    p.add_argument(
        "-o", "--output", default=None, help="folder for the checkpoint (default: a temporary one)"
    )
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.reference, "moco", "builder.py")):
        sys.exit(
            f"--reference {args.reference}: no moco/builder.py; give a checkout of facebookresearch/moco"
        )
    sys.path.insert(0, args.reference)
    import moco.builder
    import moco.loader

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official code's two .cuda() calls: stay on the CPU
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)

    # aug+ as MoCo v2 defines it: crop 0.2-1, jitter 0.4/0.4/0.4/0.1 p 0.8, grey p 0.2, blur p 0.5, flip.
    steps = [
        T.RandomResizedCrop(args.image_size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if not args.no_blur:
        steps.append(T.RandomApply([moco.loader.GaussianBlur([0.1, 2.0])], p=0.5))
    steps += [
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
    data = load_dataset(
        "fashion-mnist-embedded", "train", transform=moco.loader.TwoCropsTransform(T.Compose(steps))
    )
    data = Subset(data, range(args.images))
    loader = DataLoader(
        data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True
    )

    model = moco.builder.MoCo(getattr(models, args.arch), 128, args.moco_k, 0.999, 0.2, mlp=True)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(
        model.parameters(), 0.03 * args.batch_size / 256, momentum=0.9, weight_decay=1e-4
    )
    model.train()
    t_setup = time.perf_counter()
    t_first = None
    n_steps = 0
    for i, ((im_q, im_k), _) in enumerate(loader):
        if t_first is None:
            t_first = time.perf_counter()
        output, target = model(im_q=im_q, im_k=im_k)
        loss = criterion(output, target)
        top = output.topk(5, dim=1).indices
        acc1 = (top[:, :1] == target[:, None]).any(dim=1).float().mean() * 100
        acc5 = (top == target[:, None]).any(dim=1).float().mean() * 100
        stats = (loss.item(), acc1.item(), acc5.item())  # the official meters read these every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n_steps += 1
        if i % args.print_freq == 0:
            print(f"step {i} loss {stats[0]:.3f} acc1 {stats[1]:.1f}", file=sys.stderr)
    t_loop = time.perf_counter()
    out = args.output or tempfile.mkdtemp()
    torch.save(
        {
            "epoch": 1,
            "arch": args.arch,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        os.path.join(out, "checkpoint_0000.pth.tar"),
    )
    t_end = time.perf_counter()
    dist.destroy_process_group()
    print(
        json.dumps(
            {
                "images": n_steps * args.batch_size,
                "steps": n_steps,
                "threads": torch.get_num_threads(),
                "startup_s": t_setup - T_START,
                "first_batch_s": (t_first or t_loop) - t_setup,
                "loop_s": t_loop - (t_first or t_loop),
                "checkpoint_s": t_end - t_loop,
            }
        )
    )


if __name__ == "__main__":
    main()
