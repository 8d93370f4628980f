"""Two gloo processes under torchrun reproduce the single-process math on the same global batch."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import DDP_STEPS, global_batch, label_ids, pid_of_rank, tiny_moco_kwargs

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
    assert ranks[0]["queue_ptr"] == ranks[1]["queue_ptr"] == (DDP_STEPS * 8) % 32
    # The label queue holds each enqueued key's label at the key's column, on both ranks: the last step
    # wrapped around over the first block.
    expected_labels = torch.cat([label_ids(s) for s in (4, 1, 2, 3)])
    for r in ranks:
        assert torch.equal(r["queue_labels"], expected_labels)

    # Single process, same global batch: split BN into 2 groups = the per-rank BN of 2 processes,
    # and the same generator seed draws the same shuffle permutation.
    torch.manual_seed(0)
    model = MoCo(**tiny_moco_kwargs(bn_splits=2))
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(123)
    losses = []
    for step in range(DDP_STEPS):
        out = model(*global_batch(step), False, gen, label_ids(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        if step == 2:
            encoder_q = {k: v.detach().clone() for k, v in model.encoder_q.named_parameters()}
    # Split BN normalises both groups in one call and the convolutions see the whole batch, so sums run in
    # another order than on two processes: float32 rounding, grown over the SGD steps through BN groups of
    # four images (in float64 the two single-process forms agree exactly; a wrong grouping or shuffle moves
    # the loss by > 1e-2 and a key by O(1)).
    assert ranks[0]["losses"] == pytest.approx(losses, rel=1e-3)
    # Same keys at the same columns as one process, whose keys follow the batch order (test_moco.py):
    # so each label sits beside its own image's key.
    torch.testing.assert_close(ranks[0]["queue"], model.queue, rtol=0, atol=1e-3)
    assert torch.equal(model.queue_labels, expected_labels)
    for k, v in encoder_q.items():
        torch.testing.assert_close(ranks[0]["encoder_q"][k], v, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_ddp_mochi_keeps_the_queue_identical_on_all_ranks(tmp_path):
    ranks = run_torchrun(tmp_path, "mix")
    torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"], rtol=0, atol=0)
    assert torch.equal(ranks[0]["queue_labels"], ranks[1]["queue_labels"])
    assert torch.equal(ranks[0]["queue_labels"], torch.cat([label_ids(s) for s in (4, 1, 2, 3)]))
    for k in ranks[0]["encoder_q"]:
        torch.testing.assert_close(ranks[0]["encoder_q"][k], ranks[1]["encoder_q"][k], rtol=0, atol=0)


def test_intra_op_threads_are_this_process_share_of_the_cores(monkeypatch):
    from mochi import distributed

    monkeypatch.setattr(distributed, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert distributed.intra_op_threads() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes share the node
    assert distributed.intra_op_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert distributed.intra_op_threads() == 1  # never fewer than one


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


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_a_hung_rank_stops_the_other_within_the_collective_timeout(tmp_path):
    """SIGSTOP one rank (hung, not dead): the other must fail with the lost-peer message once a collective
    has waited MOCHI_DIST_TIMEOUT seconds, not hang."""
    import signal
    import time
    import uuid

    timeout_s = 20
    out, marker = tmp_path / "ddp", uuid.uuid4().hex
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "mochi.cli", "pretrain", "--data", "fashion-mnist-embedded", "--limit", "4096", "-a", "resnet18",
           "--image-size", "32", "--aug", "aug-plus-small", "-b", "32", "--moco-k", "64", "--bn-splits", "1",
           "-j", "0", "--epochs", "1", "--log-every", "1", "-q", "-o", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOCHI_FAULT_TEST": marker}
    env["MOCHI_DIST_TIMEOUT"] = str(timeout_s)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopped = None
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
            assert time.time() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.2)
        survivor = pid_of_rank(marker, 0, deadline)
        stopped = pid_of_rank(marker, 1, deadline)
        os.kill(stopped, signal.SIGSTOP)
        t_stop = time.time()
        # rank 0 must be gone (exited, or a zombie torchrun has not reaped yet) within the timeout + slack
        while Path(f"/proc/{survivor}").exists() and "Z" not in _state(survivor):
            assert time.time() - t_stop < timeout_s + 60, "the surviving rank hangs"
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=180)  # torchrun then ends the stopped rank too
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "rank 0 of 2: another process stopped answering" in output, output[-3000:]
    assert "--resume auto" in output


def _state(pid: int) -> str:
    """The one-letter state of a process (R, S, T, Z...), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
