"""Dataset wrappers the loaders compose: list -> mapped -> iterated by a sampler -> grouped."""
import logging
import pickle
from typing import Callable, Iterable, Iterator, List

import numpy as np
import torch.utils.data as data
from torch.utils.data.sampler import Sampler

from .bad_samples import BadSampleError, SkipCounter

__all__ = ["DatasetFromList", "MapDataset", "MapIterableDataset", "ToIterableDataset", "AspectRatioGroupedDataset"]

logger = logging.getLogger(__name__)


class DatasetFromList(data.Dataset):
    """
    A map-style dataset over a list of records. With `serialize`, the records are pickled into one
    numpy byte buffer: data-loader workers then share its pages instead of slowly copying every
    Python object they touch (reference counting writes to each one).
    """

    def __init__(self, lst: List, copy: bool = True, serialize: bool = True):
        self._copy = copy
        self._serialize = serialize
        if serialize:
            blobs = [np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for x in lst]
            self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
            self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
            logger.info("Serialized %d records into %.2f MiB.", len(lst), len(self._buffer) / 1024**2)
        else:
            self._lst = lst

    def __len__(self) -> int:
        return len(self._ends) if self._serialize else len(self._lst)

    def __getitem__(self, idx: int):
        if self._serialize:
            start = 0 if idx == 0 else int(self._ends[idx - 1])
            return pickle.loads(memoryview(self._buffer[start : int(self._ends[idx])]))
        # A mapper that edits its input in place must not corrupt the list.
        return pickle.loads(pickle.dumps(self._lst[idx])) if self._copy else self._lst[idx]


class MapDataset(data.Dataset):
    """Applies `map_func` to each item of a map-style dataset."""

    def __init__(self, dataset: data.Dataset, map_func: Callable):
        self._dataset = dataset
        self._map_func = map_func

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, idx: int):
        return self._map_func(self._dataset[idx])


class MapIterableDataset(data.IterableDataset):
    """Applies `map_func` to each item of an iterable."""

    def __init__(self, dataset: Iterable, map_func: Callable):
        self._dataset = dataset
        self._map_func = map_func

    def __iter__(self) -> Iterator:
        for item in self._dataset:
            yield self._map_func(item)


def _worker_shard(iterable: Iterable) -> Iterator:
    """Inside a DataLoader worker, the share of `iterable` that this worker should produce."""
    info = data.get_worker_info()
    if info is None or info.num_workers == 1:
        yield from iterable
        return
    for i, item in enumerate(iterable):
        if i % info.num_workers == info.id:
            yield item


class ToIterableDataset(data.IterableDataset):
    """
    Iterates a map-style dataset in the order of `sampler`, split among data-loader workers.

    With `skip_bad_samples`, an item that raises `BadSampleError` is left out with a warning that
    carries the running count of skipped items (per worker process); otherwise the error propagates.
    """

    def __init__(self, dataset: data.Dataset, sampler: Sampler, skip_bad_samples: bool = False):
        self.dataset = dataset
        self.sampler = sampler
        self.skip_bad_samples = skip_bad_samples

    def __iter__(self) -> Iterator:
        skipped = SkipCounter("image")
        for idx in _worker_shard(self.sampler):
            try:
                yield self.dataset[idx]
            except BadSampleError as e:
                if not self.skip_bad_samples:
                    raise
                skipped.skip(e)

    def __len__(self) -> int:
        return len(self.sampler)


class AspectRatioGroupedDataset(data.IterableDataset):
    """
    Batches items of an iterable so that each batch holds only landscape (width > height) or only
    portrait images, which keeps padding small. Yields lists of `batch_size` items.
    """

    def __init__(self, dataset: Iterable[dict], batch_size: int):
        self.dataset = dataset
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[List[dict]]:
        buckets: List[List[dict]] = [[], []]
        for d in self.dataset:
            bucket = buckets[0 if d["width"] > d["height"] else 1]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                del bucket[:]
