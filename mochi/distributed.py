"""Thin helpers over ``torch.distributed`` that degrade to no-ops in a single process.

Processes are started by ``torchrun`` (single or multi node); this module only reads the environment
it sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and initialises the default group.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which honours taskset and cgroup cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def intra_op_threads() -> int:
    """Threads for this process's tensor maths on CPU: its share of the cores it may run on (those cores
    divided by the processes torchrun started on the node), at least one.

    Data-loader workers are not subtracted: each runs one thread (the DataLoader sets that) and, beside a CPU
    training step, mostly sleeps. Measured on two cores with two loader workers
    (``benchmarks/bench_pretrain_reference.py``, ResNet-18, 32 px), two threads beat one by 1.11x on idle
    cores and by 1.13x beside two other busy processes. Oversubscribed threads cost little because the
    ``mochi`` command lets idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``).
    """
    return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> this process's device (``cuda:LOCAL_RANK`` under torchrun)."""
    from mochi.errors import MochiError

    if name not in ("auto", "cpu", "cuda"):
        raise MochiError(f"unknown --device {name!r}: use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise MochiError("--device cuda was requested but no CUDA device is available; use --device cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    # One process per device: LOCAL_RANK among the visible devices (a launcher that binds one device per
    # process leaves only that one visible).
    return torch.device("cuda", local_rank() % torch.cuda.device_count())


# A collective that waits longer than this means another process stopped or died: fail instead of hanging.
# torch's own default is 30 minutes (gloo); MOCHI_DIST_TIMEOUT (seconds) changes it.
DEFAULT_TIMEOUT_S = 600


def collective_timeout() -> datetime.timedelta:
    """The process-group timeout: ``MOCHI_DIST_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get("MOCHI_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        from mochi.errors import MochiError

        raise MochiError(
            f"MOCHI_DIST_TIMEOUT={raw!r}: give a positive number of seconds (default {DEFAULT_TIMEOUT_S})"
        )
    return datetime.timedelta(seconds=seconds)


def init_from_env(device_type: str) -> None:
    """Initialise the default process group from torchrun's environment: NCCL on GPU, gloo on CPU, with
    :func:`collective_timeout` as the bound on any collective."""
    if is_dist() or not launched_by_torchrun():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=collective_timeout())


# Text of the errors gloo and NCCL raise when a peer is gone or a collective timed out (not any NCCL error).
_LOST_PEER = ("connection closed by peer", "connection reset by peer", "timed out", "timeout")


def lost_peer_error(err: BaseException) -> str | None:
    """A one-line explanation when ``err`` is a collective failing because another process is gone."""
    text = str(err).lower()
    if not is_dist() or not isinstance(err, RuntimeError) or not any(s in text for s in _LOST_PEER):
        return None
    first = next((line for line in str(err).splitlines() if line.strip()), "")
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:120]  # drop the C++ source location
    return (
        f"rank {rank()} of {world_size()}: another process stopped answering ({first}). It was killed, "
        "ran out of memory or hung; see its own log. Resume the run with --resume auto"
    )


def shutdown() -> None:
    if is_dist():
        dist.destroy_process_group()


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order (no gradient)."""
    if not is_dist() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_dist() and world_size() > 1:
        dist.broadcast(x, src=src)
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (a picklable value; no-op in one process)."""
    if not is_dist() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (used for logged metrics)."""
    if not is_dist() or world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def barrier() -> None:
    if is_dist() and world_size() > 1:
        dist.barrier()
