"""Stopping on a signal and resuming mid-epoch: the weights equal an uninterrupted run's, bit for bit."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mochi.cli import main
from mochi.layout import checkpoint_name, is_mid_epoch, list_checkpoints
from mochi.pretrain import run_dir
from mochi.pretrain.checkpoint import save_checkpoint
from mochi.pretrain.preempt import STOPPED_EXIT_CODE, StopSignals

# 2 epochs of 6 steps, MoCHi mixing from epoch 1 (its random draws are part of what must replay)
ARGS = [
    "--data", "fashion-mnist-embedded", "--limit", "96", "-a", "resnet18", "--image-size", "32",
    "--aug", "aug-plus-small", "-b", "16", "--moco-k", "64", "--moco-m", "0.99", "--bn-splits", "2",
    "--mochi-n", "8", "--mochi-s", "8", "--mochi-s-prime", "4", "--mochi-warmup", "1",
    "--epochs", "2", "--log-every", "1", "-j", "0", "-q",
]  # fmt: skip
STEPS = 6
HANDLED = (signal.SIGTERM, signal.SIGUSR1)


def run_cli(args):
    return CliRunner().invoke(main, ["pretrain", *args])


def records(out):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timing = ("images_per_s", "time_s")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    res = run_cli([*ARGS, "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def assert_same_run(a, b):
    """Final weights (both encoders, queue, pointer, BN buffers), optimizer state and metrics are equal."""
    ca = torch.load(a / checkpoint_name(1), weights_only=True)
    cb = torch.load(b / checkpoint_name(1), weights_only=True)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), k
    assert records(a) == records(b)  # every step and epoch row once, with the same values


def signal_at(monkeypatch, global_step, signum):
    """Make the run send itself ``signum`` right after the step ``global_step`` is logged."""
    write = run_dir.MetricsLogger.write

    def write_then_signal(self, record, step):
        write(self, record, step)
        if record["type"] == "step" and step == global_step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(run_dir.MetricsLogger, "write", write_then_signal)


_draw = random.Random(16)
# One stop mid-epoch 0, one at the end of epoch 0, one mid-epoch 1 (global steps, 1-based).
DRAWS = [(_draw.randint(1, STEPS - 1), signal.SIGUSR1), (STEPS, signal.SIGTERM),
         (_draw.randint(STEPS + 1, 2 * STEPS - 1), signal.SIGUSR1)]  # fmt: skip


@pytest.mark.parametrize(("at", "signum"), DRAWS, ids=[f"step{a}-{s.name}" for a, s in DRAWS])
def test_a_signal_at_any_step_then_resume_gives_the_same_weights(
    tmp_path, monkeypatch, reference, at, signum
):
    out = tmp_path / "run"
    before = [signal.getsignal(s) for s in HANDLED]
    signal_at(monkeypatch, at, signum)
    res = run_cli([*ARGS, "-o", str(out)])
    assert res.exit_code == STOPPED_EXIT_CODE, res.output
    assert [signal.getsignal(s) for s in HANDLED] == before  # our handlers are gone again
    epoch, step = divmod(at, STEPS)
    saved = checkpoint_name(epoch, step) if step else checkpoint_name(epoch - 1)
    assert [p.name for p in list_checkpoints(out)][-1] == saved
    assert f"stopped by {signum.name}" in res.output and "--resume auto" in res.output
    assert str(out / saved) in res.output
    ckpt = torch.load(out / saved, weights_only=True)
    assert (ckpt["epoch"], ckpt["mochi"]["step"]) == (epoch, step)
    monkeypatch.undo()
    res = run_cli([*ARGS, "--resume", "auto", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert_same_run(reference, out)
    assert not [p for p in list_checkpoints(out) if is_mid_epoch(p)]  # superseded by the epoch ends


class Crash(Exception):
    pass


def test_save_every_steps_resumes_a_crashed_run_exactly(tmp_path, monkeypatch, reference):
    out = tmp_path / "run"
    write = run_dir.MetricsLogger.write

    def crash_at_step_5(self, record, step):
        write(self, record, step)
        if record["type"] == "step" and step == 5:
            raise Crash("killed")  # no signal, no chance to save: only --save-every-steps saved anything

    monkeypatch.setattr(run_dir.MetricsLogger, "write", crash_at_step_5)
    res = run_cli([*ARGS, "--save-every-steps", "4", "--keep-last", "1", "-o", str(out)])
    assert isinstance(res.exception, Crash)
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(0, 4)]
    monkeypatch.undo()
    res = run_cli([*ARGS, "--save-every-steps", "4", "--keep-last", "1", "--resume", "auto", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert_same_run(reference, out)
    # step 8 (epoch 1, step 2) was saved, then superseded by the end of epoch 1; --keep-last 1 kept that
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(1)]


def test_checkpoint_order_and_pruning_keep_what_resume_needs(tmp_path):
    names = [checkpoint_name(0), checkpoint_name(1, 3), checkpoint_name(1), checkpoint_name(2, 1)]
    for name in reversed(names):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_checkpoints(tmp_path)] == names  # training order
    assert [p.name for p in list_checkpoints(tmp_path, mid_epoch=False)] == [names[0], names[2]]
    ckpt = {"epoch": 2, "mochi": {"step": 4}, "state_dict": {}, "optimizer": {}}
    path = save_checkpoint(ckpt, tmp_path, keep_last=1)
    # the newer mid-epoch file replaced the older one; keep_last counts epoch ends only
    assert path.name == checkpoint_name(2, 4)
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(1), checkpoint_name(2, 4)]


def test_stop_signals_only_record_and_put_the_old_handlers_back():
    before = [signal.getsignal(s) for s in HANDLED]
    with StopSignals() as stop:
        assert [signal.getsignal(s) for s in HANDLED] != before
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal (while saving): nothing more happens
        assert stop.received == signal.SIGUSR1 and not stop.stopping
        assert stop.agreed(torch.device("cpu")) and stop.name == "SIGUSR1"
    assert [signal.getsignal(s) for s in HANDLED] == before


@pytest.mark.slow
def test_an_external_sigterm_with_loader_workers_then_resume(tmp_path, one_thread):
    """A real signal from another process, while 2 loader workers feed the run: still the same weights
    as the run without workers (each image's augmentation depends on its seed, epoch and index only)."""
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert run_cli([*ARGS, "-o", str(reference)]).exit_code == 0
    cmd = [sys.executable, "-m", "mochi.cli", "pretrain", *ARGS, "-j", "2", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").exists() or len(records(out)) < 2:
            assert time.time() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == STOPPED_EXIT_CODE, output[-3000:]
    assert "stopped by SIGTERM" in output
    res = run_cli([*ARGS, "-j", "2", "--resume", "auto", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert_same_run(reference, out)


def test_under_ddp_the_stop_agreement_runs_only_when_due(monkeypatch):
    """The agreement is an all-reduce read back on the host: the loop asks for it at logging steps only."""
    from mochi import distributed as dist_utils

    calls = []

    def fake_all_reduce(flag, op=None):
        calls.append(int(flag.item()))
        flag.fill_(signal.SIGUSR1)  # another rank was signalled

    monkeypatch.setattr(dist_utils, "is_dist", lambda: True)
    monkeypatch.setattr(dist_utils, "world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    stop = StopSignals()
    assert not stop.agreed(torch.device("cpu"), due=False) and calls == []  # no collective between
    assert stop.agreed(torch.device("cpu"), due=True) and calls == [0]  # the other rank's signal, agreed
    assert stop.name == "SIGUSR1" and stop.agreed(torch.device("cpu"), due=False) and calls == [0]
