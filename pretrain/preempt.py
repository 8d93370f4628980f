"""Stopping a run cleanly on the signal a scheduler sends before preemption or the time limit.

SLURM (``--signal=USR1@90``), submitit and ``kill`` send SIGTERM, SIGUSR1 or SIGUSR2 some time before the
process is killed. While training, :class:`StopSignals` catches them: the handler only records the signal,
and the loop, at the next step boundary, writes a checkpoint (atomically) and returns. Under
``torch.distributed`` the ranks agree through :meth:`StopSignals.agreed` (one all-reduce of a single
number, read back on the host) at each logging step rather than after every step, so that the collective's
host synchronisation does not stall every step; all ranks stop after the same step even when only one of them
was signalled, at most ``--log-every`` steps after the signal. The previous
handlers are put back when training ends, so a launcher's own handler (submitit's) runs for a signal that
arrives before or after training.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import torch

from mochi import distributed as dist_utils

log = logging.getLogger("mochi.pretrain")

# The signals SLURM and its launchers send before they kill a job.
DEFAULT_STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)

# Exit status of `mochi pretrain` stopped by a signal after saving its checkpoint: EX_TEMPFAIL of
# sysexits.h, "temporary failure, retry": not 0 (the run is not finished), not a crash either.
STOPPED_EXIT_CODE = 75


class StopSignals:
    """A context manager: while open, the ``signals`` set a flag instead of their usual action.

    Handlers can only be installed from the main thread; elsewhere this does nothing (a stop then only
    comes from another rank). A second signal while the checkpoint is written changes nothing: the handler
    never raises, so a save is never cut short by it.
    """

    def __init__(self, signals: Sequence[int] = DEFAULT_STOP_SIGNALS) -> None:
        self.signals = tuple(dict.fromkeys(signals))
        self.received: int | None = None  # the signal this process got (or another rank, once agreed)
        self.stopping = False  # set by agreed(): every rank has the same value
        self.previous: dict[int, Callable[..., Any] | int | None] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning(
                "received %s: stopping after this step, with a checkpoint", signal.Signals(signum).name
            )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    def agreed(self, device: torch.device, due: bool = True) -> bool:
        """Whether any rank received a stop signal (a collective: every rank calls it at the same step).

        Under ``torch.distributed`` the ranks only compare when ``due`` (the caller's choice of steps, the
        same on every rank); otherwise the previous agreement stands and no collective runs. One process
        needs no agreement and answers at once.
        """
        if dist_utils.is_dist() and dist_utils.world_size() > 1:
            if not due:
                return self.stopping
            flag = torch.tensor([0 if self.received is None else int(self.received)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if int(flag.item()):
                self.received = self.received or int(flag.item())  # another rank's signal: stop with it
            self.stopping = bool(flag.item())
        else:
            self.stopping = self.received is not None
        return self.stopping

    @property
    def name(self) -> str | None:
        return None if self.received is None else signal.Signals(self.received).name
