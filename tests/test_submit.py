"""A pretraining submitit job, preempted mid-training, requeues itself and ends with the same weights."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from test_preempt import ARGS, assert_same_run, records, run_cli

from mochi.errors import MochiError
from mochi.pretrain import submit
from mochi.pretrain.config import PretrainConfig


def test_a_missing_submitit_is_one_clear_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(MochiError, match=r"pip install 'mochi-ssl\[slurm\]'"):
        submit.PretrainJob()


def _task_pid(controller: int, deadline: float) -> int:
    """The job's task: the process submitit's local controller started."""
    while time.time() < deadline:
        children = Path(f"/proc/{controller}/task/{controller}/children")
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        time.sleep(0.1)
    raise AssertionError("no task process")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_preempted_job_requeues_and_finishes_with_the_same_weights(tmp_path, one_thread):
    submitit = pytest.importorskip("submitit")
    reference = tmp_path / "reference"
    assert run_cli([*ARGS, "-o", str(reference)]).exit_code == 0
    saved = json.loads((reference / "config.json").read_text())["config"]
    cfg = PretrainConfig.from_dict({**saved, "output": str(tmp_path / "job")})

    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=20)
    job = submit.submit_pretrain(executor, cfg)
    out = Path(cfg.output)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").exists() or len(records(out)) < 2:
        assert time.time() < deadline and job.state == "RUNNING", job.stderr()
        time.sleep(0.1)
    # What SLURM does before the time limit (--signal) and submitit's controller at its timeout: the
    # preemption signal to the task. (LocalJob._interrupt would send it to the controller, which dies of it.)
    preempt = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
    os.kill(_task_pid(job._process.pid, deadline), preempt)
    result = job.result()
    log = (job.stdout() or "") + (job.stderr() or "")
    assert f"received {preempt.name}" in log and "Requeued job" in log, log[-3000:]
    assert result.stopped_by is None and result.epochs_done == 2
    assert_same_run(reference, out)
