"""Pretraining as a submitit job (SLURM, or its local executor) that survives preemption and time limits.

::

    import submitit
    from mochi.pretrain.config import PretrainConfig
    from mochi.pretrain.submit import submit_pretrain

    executor = submitit.AutoExecutor(folder="runs/jobs")
    executor.update_parameters(timeout_min=24 * 60, nodes=1, tasks_per_node=8, gpus_per_node=8)
    job = submit_pretrain(executor, PretrainConfig(data="/data/imagenet", output="runs/moco"))
    result = job.result()  # a PretrainResult, once every requeue has run

Before preemption or the time limit submitit sends its signal (SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL``
says otherwise). During training :class:`PretrainJob` catches it like SIGTERM and SIGUSR1: every task stops
after the same step and rank 0 writes a checkpoint; then submitit's own handler runs, calls
:meth:`PretrainJob.checkpoint` (the same job and config) and requeues the job, which continues with
``--resume auto``. A signal before or after training goes straight to submitit's handler. A job stopped by
SIGTERM or SIGUSR1 (``scancel``, a SLURM preemption that requeues by itself) returns its result with
``stopped_by`` set; submitting the same config again continues the run.

submitit is imported only when a job is built or run: ``pip install 'mochi-ssl[slurm]'``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from typing import Any

from mochi.errors import MochiError
from mochi.pretrain.config import PretrainConfig
from mochi.pretrain.preempt import DEFAULT_STOP_SIGNALS

log = logging.getLogger("mochi.pretrain")


def require_submitit() -> Any:
    """The submitit module, or a clear error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise MochiError(
            "SLURM jobs need submitit, which is not installed: pip install 'mochi-ssl[slurm]'"
        ) from None
    return submitit


def _as_config(config: PretrainConfig | dict[str, Any]) -> PretrainConfig:
    if isinstance(config, PretrainConfig):
        return config
    return PretrainConfig.from_dict(config, strict=True)


class PretrainJob:
    """A submitit checkpointable callable: ``PretrainJob()(config)`` runs (or continues) the pretraining
    of ``config`` (a :class:`PretrainConfig` or its ``to_dict()``) in its ``output`` folder, always with
    ``resume="auto"``, and returns the :class:`~mochi.pretrain.train.PretrainResult`.

    With several tasks, ``torch.distributed`` is initialised from submitit's environment (one process per
    device, as torchrun would). Outside a submitit job it runs as a plain single-process call.
    """

    def __init__(self) -> None:
        require_submitit()

    def __call__(self, config: PretrainConfig | dict[str, Any]) -> Any:
        submitit = require_submitit()
        from mochi.pretrain.train import pretrain

        cfg = dataclasses.replace(_as_config(config), resume="auto")
        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # not inside a submitit job
            env = None
        signals = DEFAULT_STOP_SIGNALS
        requeue_signal = None
        if env is not None:
            requeue_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
            signals = (*DEFAULT_STOP_SIGNALS, requeue_signal)
            if env.num_tasks > 1:
                # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT: what torch.distributed reads (as torchrun)
                submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        result = pretrain(cfg, show_progress=False, stop_signals=signals)
        if result.stopped_by is None:
            return result
        if requeue_signal is not None and result.stopped_by == signal.Signals(requeue_signal).name:
            handler = signal.getsignal(requeue_signal)
            if callable(handler):  # submitit's: checkpoint() then requeue (rank 0 exits there)
                log.warning("saved %s; submitit requeues the job", result.last_checkpoint)
                handler(requeue_signal, None)
            return result
        log.warning(
            "stopped by %s with checkpoint %s; submit the same config again to continue",
            result.stopped_by,
            result.last_checkpoint,
        )
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption: resubmit this job with the same config (it resumes)."""
        submitit = require_submitit()
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submit_pretrain(executor: Any, config: PretrainConfig | dict[str, Any]) -> Any:
    """Submit the pretraining of ``config`` to a submitit ``executor``; returns the submitit job."""
    require_submitit()
    cfg = _as_config(config)
    return executor.submit(PretrainJob(), cfg.to_dict())
