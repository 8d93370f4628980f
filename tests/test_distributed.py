"""Two gloo processes under torchrun reproduce the single-process math on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import global_batch, tiny_moco_kwargs

from mochi.pretrain.moco import MoCo

HERE = Path(__file__).parent


def run_torchrun(out: Path, mode: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_check.py"), str(out), mode]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
def test_ddp_matches_single_process_math(tmp_path):
    ranks = run_torchrun(tmp_path, "moco")
    # queue global and identical on both ranks
    torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"], rtol=0, atol=0)
    assert ranks[0]["queue_ptr"] == ranks[1]["queue_ptr"] == 24

    # Single process, same global batch: split BN into 2 groups = the per-rank BN of 2 processes,
    # and the same generator seed draws the same shuffle permutation.
    torch.manual_seed(0)
    model = MoCo(**tiny_moco_kwargs(bn_splits=2))
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(123)
    losses = []
    for step in range(3):
        out = model(*global_batch(step), False, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert ranks[0]["losses"] == pytest.approx(losses, abs=1e-5)
    torch.testing.assert_close(ranks[0]["queue"], model.queue, rtol=0, atol=1e-4)
    for k, v in model.encoder_q.named_parameters():
        torch.testing.assert_close(ranks[0]["encoder_q"][k], v.detach(), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_ddp_mochi_keeps_the_queue_identical_on_all_ranks(tmp_path):
    ranks = run_torchrun(tmp_path, "mix")
    torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"], rtol=0, atol=0)
    for k in ranks[0]["encoder_q"]:
        torch.testing.assert_close(ranks[0]["encoder_q"][k], ranks[1]["encoder_q"][k], rtol=0, atol=0)


def test_intra_op_threads_leave_a_core_per_loader_worker(monkeypatch):
    from mochi import distributed

    monkeypatch.setattr(distributed, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert distributed.intra_op_threads(0) == 16 and distributed.intra_op_threads(4) == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes share the node
    assert distributed.intra_op_threads(2) == 2 and distributed.intra_op_threads(8) == 1
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert distributed.intra_op_threads(2) == 1  # never fewer than one


def test_collective_timeout_from_the_environment(monkeypatch):
    import datetime

    from mochi import distributed
    from mochi.errors import MochiError

    monkeypatch.delenv("MOCHI_DIST_TIMEOUT", raising=False)
    assert distributed.collective_timeout() == datetime.timedelta(seconds=distributed.DEFAULT_TIMEOUT_S)
    monkeypatch.setenv("MOCHI_DIST_TIMEOUT", "45")
    assert distributed.collective_timeout() == datetime.timedelta(seconds=45)
    for bad in ("0", "-3", "ten"):
        monkeypatch.setenv("MOCHI_DIST_TIMEOUT", bad)
        with pytest.raises(MochiError, match="MOCHI_DIST_TIMEOUT=.*positive number of seconds"):
            distributed.collective_timeout()


def test_lost_peer_errors_are_named_only_under_torch_distributed(monkeypatch):
    from mochi import distributed

    err = RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection closed by peer [127.0.0.1]:1234")
    assert distributed.lost_peer_error(err) is None  # one process: not a lost peer
    monkeypatch.setattr(distributed, "is_dist", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    message = distributed.lost_peer_error(err)
    assert message.startswith("rank 0 of 2: another process stopped answering") and "--resume auto" in message
    assert distributed.lost_peer_error(RuntimeError("shape mismatch")) is None


def test_other_nccl_errors_are_not_called_a_lost_peer(monkeypatch):
    from mochi import distributed

    monkeypatch.setattr(distributed, "is_dist", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert distributed.lost_peer_error(RuntimeError("NCCL error: invalid usage (ncclInvalidUsage)")) is None
    watchdog = RuntimeError("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(ALLGATHER)")
    assert distributed.lost_peer_error(watchdog) is not None
