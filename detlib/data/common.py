"""Dataset wrappers the loaders compose: list -> mapped -> iterated by a sampler -> grouped."""

import logging
import pickle
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch.utils.data as data
from torch.utils.data.sampler import Sampler

from .bad_samples import BadSampleError, SkipCounter
from .samplers import ConsumedStream, EpochStreamSampler

__all__ = ["DatasetFromList", "MapDataset", "ToIterableDataset", "AspectRatioGroupedDataset", "ResumableLoader"]

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


def group_by_orientation(items: Iterable, batch_size: int, is_landscape: Callable[[Any], bool]) -> Iterator[List]:
    """Lists of `batch_size` items that are all landscape or all portrait, in the order they fill up
    (an item of the other orientation waits for its own batch)."""
    buckets: Tuple[List, List] = ([], [])
    for item in items:
        bucket = buckets[0 if is_landscape(item) else 1]
        bucket.append(item)
        if len(bucket) == batch_size:
            yield bucket[:]
            del bucket[:]


def worker_shard(iterable: Iterable) -> Iterator:
    """Inside a DataLoader worker, the items of `iterable` this worker produces: item k goes to worker
    k mod num_workers, the order in which the DataLoader collects the workers' outputs."""
    info = data.get_worker_info()
    if info is None or info.num_workers == 1:
        yield from iterable
        return
    for i, item in enumerate(iterable):
        if i % info.num_workers == info.id:
            yield item


class ToIterableDataset(data.IterableDataset):
    """
    Iterates a map-style dataset in the order of `sampler`, item k by data-loader worker k mod
    num_workers (the order in which the DataLoader collects them).

    With `skip_bad_samples`, an item that raises `BadSampleError` is left out with a warning that
    carries the running count of skipped items (per worker process); otherwise the error propagates.
    """

    def __init__(self, dataset: data.Dataset, sampler: Sampler, skip_bad_samples: bool = False):
        self.dataset = dataset
        self.sampler = sampler
        self.skip_bad_samples = skip_bad_samples

    def __iter__(self) -> Iterator:
        skipped = SkipCounter("image")
        for idx in worker_shard(self.sampler):
            try:
                item = self.dataset[idx]
            except BadSampleError as e:
                if not self.skip_bad_samples:
                    raise
                skipped.skip(e)
                continue
            yield item

    def __len__(self) -> int:
        return len(self.sampler)


class AspectRatioGroupedDataset(data.IterableDataset):
    """
    Batches items of an iterable so that each batch holds only landscape (width > height) or only
    portrait images, which keeps padding small. Yields lists of `batch_size` items.
    """

    def __init__(self, dataset: Iterable, batch_size: int, record_of: Optional[Callable[[Any], dict]] = None):
        """`record_of(item)` is the dict with the item's `width` and `height` (default: the item)."""
        self.dataset = dataset
        self.batch_size = batch_size
        self.record_of = record_of

    def _is_landscape(self, item: Any) -> bool:
        record = item if self.record_of is None else self.record_of(item)
        return record["width"] > record["height"]

    def __iter__(self) -> Iterator[List]:
        return group_by_orientation(self.dataset, self.batch_size, self._is_landscape)


class ResumableLoader:
    """
    An endless training loader that records how far its consumer got in the sampler's stream, and
    can start again there in constant time: `state_dict()` after any number of batches,
    `load_state_dict()` before iterating, and the batches that follow are those that would have
    followed, without drawing or decoding the skipped items.

    Args:
        sampler: the stream the batches are made from.
        make_batches: builds a fresh iterable of `(ordinals, batch)`, the stream ordinals each batch
            accounts for with it; called at every `iter`, so it sees the sampler's restored start.
    """

    def __init__(self, sampler: EpochStreamSampler, make_batches: Callable[[], Iterable[Tuple[List[int], Any]]]):
        self.sampler = sampler
        self._make_batches = make_batches
        self._consumed = ConsumedStream(sampler)

    def __iter__(self) -> Iterator:
        for ordinals, batch in self._make_batches():
            self._consumed.consume(ordinals)
            yield batch

    def state_dict(self) -> Dict:
        """This rank's position: ints and a list of ints (what `torch.load(weights_only=True)` admits)."""
        return self._consumed.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        """Continue from `state`; iterators made before this call keep their old position."""
        self.sampler.resume(state)
        self._consumed = ConsumedStream(self.sampler)
