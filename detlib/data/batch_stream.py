"""Training batches made whole where their items are mapped: inside each data-loader worker."""

import contextlib
import random
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as data
from torch.utils.data.sampler import Sampler

from .bad_samples import BadSampleError, SkipCounter
from .common import group_by_orientation, worker_shard
from .samplers import EpochStreamSampler

__all__ = ["BatchStream"]


@contextlib.contextmanager
def _seeded_cpu_generators(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's CPU generators seeded with `seed` inside, as they were outside: an
    augmentation draws the same numbers in a worker and in the training process, whose own random
    state it leaves alone."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


def _unit_is_landscape(landscape: Sequence[bool]) -> Callable[[Tuple[int, int]], bool]:
    return lambda ordinal_and_index: bool(landscape[ordinal_and_index[1]])


def _always(_: Any) -> bool:
    return True


def _mapped_is_landscape(ordinals_and_item: Tuple[List[int], dict]) -> bool:
    item = ordinals_and_item[1]
    return item["width"] > item["height"]


class BatchStream(data.IterableDataset):
    """
    Endless batches of a map-style dataset's items in the order of `sampler`, each made whole in the
    process that maps its items, so that a data-loader worker sends one batch across the process
    boundary (its tensors moved to shared memory once) instead of one item at a time.

    The sampler's stream is cut into units of `batch_size` indices: consecutive runs, or with
    `landscape` (each dataset index's orientation, known before mapping) batches of one orientation
    planned on the indices. Unit k is mapped by worker k mod num_workers, and the DataLoader collects
    the workers' outputs in that order, so with `landscape` or without grouping the batches are the
    same for any number of workers. Each worker groups its mapped items into batches of
    `batch_size` (with `group_by_aspect_ratio`, by the mapped item's `width` and `height`): a unit
    becomes one batch unless some of its items are bad and skipped (`skip_bad_samples`), whose
    places the worker's next items fill. Grouping mapped items without `landscape` makes batches of
    items of the worker's own units, which then depend on the number of workers.

    Over an `EpochStreamSampler`, each item is mapped with the CPU random generators seeded by its
    place in the stream (`item_seed`), in a worker as in the training process: a resumed run, or
    one with another number of workers, maps every item as the first did.

    Yields `(ordinals, items)`: the stream ordinals the batch accounts for (its items' and those of
    the bad items skipped before them) and the list of mapped items.
    """

    def __init__(
        self,
        dataset: data.Dataset,
        sampler: Sampler,
        batch_size: int,
        *,
        group_by_aspect_ratio: bool,
        landscape: Optional[Sequence[bool]] = None,
        skip_bad_samples: bool = False,
    ):
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_by_aspect_ratio = group_by_aspect_ratio
        self.landscape = landscape if group_by_aspect_ratio else None
        self.skip_bad_samples = skip_bad_samples

    def _stream(self) -> Iterator[Tuple[int, int]]:
        """(ordinal, dataset index) of every item of the sampler's stream."""
        if isinstance(self.sampler, EpochStreamSampler):
            return ((cursor.ordinal, index) for cursor, index in self.sampler.positions())
        return enumerate(self.sampler)

    def _units(self) -> Iterator[List[Tuple[int, int]]]:
        is_landscape = _always if self.landscape is None else _unit_is_landscape(self.landscape)
        return group_by_orientation(self._stream(), self.batch_size, is_landscape)

    def _mapped(self) -> Iterator[Tuple[List[int], Any]]:
        """(ordinals, item) of this worker's items, bad ones left out and their ordinals carried along."""
        skipped = SkipCounter("image")
        skipped_ordinals: List[int] = []
        seeded = isinstance(self.sampler, EpochStreamSampler)
        for unit in worker_shard(self._units()):
            for ordinal, index in unit:
                try:
                    if seeded:
                        with _seeded_cpu_generators(self.sampler.item_seed(ordinal)):
                            item = self.dataset[index]
                    else:
                        item = self.dataset[index]
                except BadSampleError as e:
                    if not self.skip_bad_samples:
                        raise
                    skipped.skip(e)
                    skipped_ordinals.append(ordinal)
                    continue
                yield skipped_ordinals + [ordinal], item
                skipped_ordinals = []

    def __iter__(self) -> Iterator[Tuple[List[int], List]]:
        is_landscape = _mapped_is_landscape if self.group_by_aspect_ratio else _always
        for batch in group_by_orientation(self._mapped(), self.batch_size, is_landscape):
            yield [o for ordinals, _ in batch for o in ordinals], [item for _, item in batch]
