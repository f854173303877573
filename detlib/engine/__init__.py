"""Training: the loss-agnostic loop, hooks, distributed launch, and the default trainer."""

from .defaults import (
    DefaultPredictor,
    DefaultTrainer,
    TrainingCheckpointer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
)
from .hooks import (
    BestCheckpointer,
    CallbackHook,
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
)
from .launch import RendezvousError, launch
from .lazy_trainer import LazyConfigTrainer
from .model_ema import EMAHook, ModelEMA
from .model_with_loss import ModelWithLoss
from .preemption import PREEMPTED_EXIT_CODE, PreemptionCheckpointer, TrainingPreempted
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = [
    "DefaultPredictor",
    "DefaultTrainer",
    "TrainingCheckpointer",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "BestCheckpointer",
    "CallbackHook",
    "EvalHook",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "launch",
    "LazyConfigTrainer",
    "EMAHook",
    "ModelEMA",
    "RendezvousError",
    "PREEMPTED_EXIT_CODE",
    "PreemptionCheckpointer",
    "TrainingPreempted",
    "ModelWithLoss",
    "AMPTrainer",
    "HookBase",
    "SimpleTrainer",
    "TrainerBase",
]
