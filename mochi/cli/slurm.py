"""A `mochi` command as a submitit job (``pip install 'mochi-ssl[slurm]'``): what scripts/reproduce submits.

Each SLURM task is one process (one GPU); torch.distributed reads its rank, world size and master address
from the variables submitit exports. When SLURM preempts the job or its time runs out, submitit calls
:meth:`CommandJob.checkpoint`, which requeues the same command: every stage resumes by itself
(pretraining with ``--resume auto``, suites by skipping finished evaluations, tables are rebuilt).
"""

from __future__ import annotations

try:
    import submitit
except ImportError as err:  # the optional extra
    raise ImportError("SLURM jobs need submitit: pip install 'mochi-ssl[slurm]'") from err


class CommandJob(submitit.helpers.Checkpointable):
    """``CommandJob()(["pretrain", ...])``: run ``mochi pretrain ...`` here; requeue it on preemption."""

    def __call__(self, argv: list[str]) -> None:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1 and not (argv and argv[0] == "pretrain"):  # PretrainJob does it itself
            # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, as torchrun would set them.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if argv and argv[0] == "pretrain":
            # The pretraining job catches submitit's preemption signal too: every task stops after the same
            # step, a checkpoint is written, then submitit calls checkpoint() below and requeues.
            from mochi.cli.pretrain import config_from_args
            from mochi.pretrain.submit import PretrainJob

            PretrainJob()(config_from_args(argv[1:]))
            return
        from mochi.cli import main

        main.main(args=list(argv), prog_name="mochi", standalone_mode=False)

    def checkpoint(self, argv: list[str]) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(CommandJob(), argv)
