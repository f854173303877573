"""The model's own training losses on a held-out dataset."""

from collections import defaultdict
from typing import Dict, Iterable, List

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detlib.data import build_detection_test_loader
from detlib.data import transforms as T
from detlib.data.dataset_mapper import DatasetMapper
from detlib.data.detection_utils import build_augmentation
from detlib.utils import comm
from detlib.utils.events import EventStorage, get_event_storage


def build_validation_loader(cfg, dataset_names: List[str]):
    """A finite loader over `dataset_names` that keeps annotations (the model needs them for its
    losses) but resizes deterministically, as at test time, so that successive validation losses
    differ only by the model."""
    augmentations: List[T.Augmentation] = build_augmentation(cfg, is_train=False)
    mapper = DatasetMapper(cfg, is_train=True, augmentations=augmentations, recompute_boxes=False)
    return build_detection_test_loader(cfg, list(dataset_names), mapper=mapper)


def loss_on_dataset(model: nn.Module, data_loader: Iterable[List[dict]]) -> Dict[str, float]:
    """
    The mean of each of `model`'s training losses over the batches of `data_loader` (over every
    rank's batches when distributed; collective then), plus their sum as `total_loss`.

    The model runs in training mode (its own proposal and sampling behaviour) without gradients.
    It is left as found: mode, buffers (e.g. BatchNorm statistics) and the event storage of the
    caller (what `forward` records goes to a private storage). Random generators are not
    restored here; callers that need the training stream unchanged save and restore them.
    """
    module = model.module if isinstance(model, DistributedDataParallel) else model
    was_training = module.training
    buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
    sums: Dict[str, float] = defaultdict(float)
    num_batches = 0
    try:
        iteration = get_event_storage().iter
    except (AssertionError, RuntimeError):
        iteration = 0
    module.train()
    try:
        with torch.no_grad(), EventStorage(iteration):
            for inputs in data_loader:
                losses = module(inputs)
                for name, value in losses.items():
                    sums[name] += float(value)
                num_batches += 1
    finally:
        module.train(was_training)
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])

    totals: Dict[str, float] = defaultdict(float)
    total_batches = 0
    for rank_sums, rank_batches in comm.all_gather((dict(sums), num_batches)):
        for name, value in rank_sums.items():
            totals[name] += value
        total_batches += rank_batches
    if total_batches == 0:
        raise ValueError("The validation loader yielded no batches; is the validation dataset empty?")
    means = {name: value / total_batches for name, value in sorted(totals.items())}
    means["total_loss"] = sum(means.values())
    return means
