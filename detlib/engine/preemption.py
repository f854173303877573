"""Leaving a run cleanly when a cluster preempts it: on SIGTERM or SIGUSR1 (what SLURM and Kubernetes
send ahead of a kill) the step in progress finishes, a complete checkpoint is written, and the
process exits with `PREEMPTED_EXIT_CODE`, so that the job can be requeued and run with `--resume`."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Optional, Sequence

from detlib.checkpoint import DetectionCheckpointer
from detlib.utils import comm

from .train_loop import HookBase

__all__ = ["PREEMPTED_EXIT_CODE", "TrainingPreempted", "PreemptionCheckpointer"]

# EX_TEMPFAIL of sysexits.h: a temporary failure, the same command will work when run again.
PREEMPTED_EXIT_CODE = 75

logger = logging.getLogger(__name__)


class TrainingPreempted(SystemExit):
    """Training stopped on a preemption signal after writing `checkpoint`; exits the process with
    `PREEMPTED_EXIT_CODE` unless caught."""

    def __init__(self, signal_name: str, iteration: int, checkpoint: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.signal_name = signal_name
        self.iteration = iteration
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return f"preempted by {self.signal_name} after iteration {self.iteration}; resume from {self.checkpoint}"


class PreemptionCheckpointer(HookBase):
    """
    Turns SIGTERM / SIGUSR1 into a checkpoint and `TrainingPreempted`, between two steps.

    The signal handler only records the request. After every step the ranks agree whether any of
    them got a signal (one small collective), so that all of them stop after the same step and save
    one checkpoint together. A request during the last step lets training finish normally.
    """

    def __init__(
        self,
        checkpointer: DetectionCheckpointer,
        signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGUSR1),
        file_prefix: str = "model",
    ):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self.file_prefix = file_prefix
        self._received: Optional[str] = None
        self._previous_handlers: dict = {}

    def _on_signal(self, signum: int, frame) -> None:
        self._received = signal.Signals(signum).name

    def before_train(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training runs outside the main thread: preemption signals are not handled")
            return
        for sig in self.signals:
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def after_step(self) -> None:
        received = comm.all_gather(self._received) if comm.get_world_size() > 1 else [self._received]
        names = sorted({name for name in received if name is not None})
        iteration = self.trainer.iter
        if not names or iteration >= self.trainer.max_iter - 1:
            return
        name = f"{self.file_prefix}_{iteration:07d}"
        logger.warning("Preempted (%s): saving %s after iteration %d", "/".join(names), name, iteration)
        self.checkpointer.save(name, iteration=iteration)
        raise TrainingPreempted("/".join(names), iteration, name)

    def after_train(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}
