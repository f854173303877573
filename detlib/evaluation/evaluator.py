"""The evaluator protocol and the loop that runs a model over a dataset."""

import datetime
import logging
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from typing import Dict, Iterable, List, Optional, Union

import torch
from torch import nn
from tqdm import tqdm

from detlib.utils import comm

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """
    Accumulates a model's outputs over a dataset and turns them into metrics.

    `reset()` is called before a run, `process(inputs, outputs)` once per batch, and `evaluate()` at
    the end; `evaluate` returns `{task: {metric: float}}`. In distributed runs every rank processes
    its own shard; evaluators gather what they need and return results on the main process only.
    """

    def reset(self) -> None:
        pass

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        pass

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        pass


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators side by side; their result dicts must not share task names."""

    def __init__(self, evaluators: List[DatasetEvaluator]):
        super().__init__()
        self._evaluators = evaluators

    def reset(self) -> None:
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        results: OrderedDict[str, Dict[str, float]] = OrderedDict()
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if not comm.is_main_process() or result is None:
                continue
            for task, metrics in result.items():
                if task in results:
                    raise KeyError(f"Two evaluators both returned results for task '{task}'.")
                results[task] = metrics
        return results


@contextmanager
def inference_context(model: nn.Module):
    """Puts `model` in eval mode for the duration of the block and restores its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable[List[dict]],
    evaluator: Union[DatasetEvaluator, List[DatasetEvaluator], None],
    num_warmup: int = 5,
) -> Optional[Dict[str, Dict[str, float]]]:
    """
    Runs `model` (in eval mode, without gradients) over every batch of `data_loader`, feeds each
    batch and its outputs to `evaluator`, and returns `evaluator.evaluate()`.

    Shows a progress bar with an ETA on the main process and logs the per-image inference time,
    leaving out the first `num_warmup` iterations (allocator warm-up, lazy initialisation).
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(list(evaluator))
    evaluator.reset()

    total = len(data_loader)  # type: ignore[arg-type]
    num_warmup = min(num_warmup, total - 1) if total > 0 else 0
    num_images_timed = 0
    compute_time = 0.0
    start = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        progress = tqdm(
            data_loader,
            total=total,
            desc="inference",
            unit="batch",
            disable=not comm.is_main_process(),
            dynamic_ncols=True,
        )
        for idx, inputs in enumerate(progress):
            if idx == num_warmup:
                compute_time = 0.0
                num_images_timed = 0
            tic = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - tic
            num_images_timed += len(inputs)
            evaluator.process(inputs, outputs)

    total_time = time.perf_counter() - start
    num_devices = comm.get_world_size()
    logger.info(
        "Inference done: %d batches in %s (%d device(s)); %.4f s / image of model time after %d warm-up batches.",
        total,
        datetime.timedelta(seconds=int(total_time)),
        num_devices,
        compute_time / max(num_images_timed, 1),
        num_warmup,
    )
    results = evaluator.evaluate()
    # An evaluator that returns None on non-main ranks still yields a dict for callers.
    return {} if results is None else results
