"""Run under ``torchrun --nproc_per_node 2``: a few MoCo(-HI) steps with DDP on gloo.

Writes ``<out>/rank<r>.pt`` with the per-step global losses, the queue, its labels, its pointer and the
query encoder's weights, for tests/test_distributed.py to compare against single-process math. Each image's
label is its index in the global batches (``label_ids``), so where it lands in the label queue is known.
"""

import sys

import torch
import torch.distributed as dist
from fixtures import DDP_STEPS, global_batch, label_ids, tiny_moco_kwargs

from mochi.pretrain.moco import MochiParams, MoCo


def main(out: str, mix: bool) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    mochi = MochiParams(4, 3, 2) if mix else None
    model = MoCo(**tiny_moco_kwargs(bn_splits=1), mochi=mochi, analysis_n=4)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(123 + (rank if mix else 0))
    losses = []
    for step in range(DDP_STEPS):  # 5 steps of 8 keys: the queue of 32 wraps around
        xq, xk = global_batch(step)
        b = xq.shape[0] // world
        mine = slice(rank * b, (rank + 1) * b)
        out_ = ddp(xq[mine], xk[mine], mix, gen, label_ids(step)[mine])
        opt.zero_grad()
        out_["loss"].backward()
        opt.step()
        loss = out_["loss"].detach().clone()
        dist.all_reduce(loss)
        losses.append(loss.item() / world)
        if step == 2:  # parameters only: BN running statistics are per-process by design
            encoder_q = {k: v.detach().clone() for k, v in model.encoder_q.named_parameters()}
    torch.save(
        {
            "losses": losses,
            "queue": model.queue.clone(),
            "queue_labels": model.queue_labels.clone(),
            "queue_ptr": int(model.queue_ptr),
            "encoder_q": encoder_q,  # after 3 steps: float drift between the two paths grows with steps
        },
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "mix")
