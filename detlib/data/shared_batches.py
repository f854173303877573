"""Whole batches sent from data-loader workers through shared-memory buffers that are used again and again."""

import copy
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
import torch.utils.data as data
from torch.multiprocessing.reductions import StorageWeakRef

__all__ = ["SharedBatchSlots"]

_ALIGN = 64  # bytes: every dtype's alignment, and a cache line


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`obj` with each tensor t inside it replaced by fn(t), in a fixed order: through lists, tuples, dicts and
    the attributes of detlib's structures (Instances, Boxes, masks, keypoints); other objects are left as they are."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if type(obj) in (list, tuple):
        return type(obj)(_map_tensors(x, fn) for x in obj)
    if type(obj) is dict:
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if type(obj).__module__.startswith("detlib.structures") and hasattr(obj, "__dict__"):
        mapped = copy.copy(obj)
        mapped.__dict__.update(_map_tensors(obj.__dict__, fn))
        return mapped
    return obj


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class SharedBatchSlots:
    """
    Shared-memory buffers through which data-loader workers send whole batches. A worker copies every tensor of a
    batch into one free buffer of its own and sends views of it, so one shared storage crosses the process
    boundary per batch; and the buffer serves batch after batch. A fresh shared-memory segment per tensor (what
    sending a tensor does otherwise) costs more than the copy: its pages are mapped and zeroed one by one. The
    training process marks a buffer free again once the last tensor of its batch is gone, so a worker never
    writes into a batch that is still in use; when all of a worker's buffers are in use, it sends the batch as
    it is.

    Made before the workers start (they share its table of free buffers); `pack` runs in the workers and
    `unpack` in the training process.
    """

    def __init__(self, num_workers: int, slots_per_worker: int = 8):
        self._free = torch.ones(num_workers, slots_per_worker, dtype=torch.bool).share_memory_()
        self._buffers: List[Optional[torch.Tensor]] = [None] * slots_per_worker  # in a worker: its own
        self._in_use: List[Tuple[Tuple[int, int], StorageWeakRef]] = []  # in the training process

    def pack(self, batch: Any) -> Tuple[Optional[Tuple[int, int]], Optional[torch.Tensor], Any]:
        """In a worker: (its id and the buffer's index, the buffer, `batch` with its tensors moved into the
        buffer); (None, None, `batch`) outside a worker, without tensors, or when every buffer is in use."""
        info = data.get_worker_info()
        tensors: List[torch.Tensor] = []
        _map_tensors(batch, lambda t: tensors.append(t) or t)
        # A copy of the row first: the training process frees buffers while this worker reads.
        free = [] if info is None else [i for i, is_free in enumerate(self._free[info.id].tolist()) if is_free]
        if not tensors or not free:
            return None, None, batch
        total = sum(_aligned(_nbytes(t)) for t in tensors)
        sizes = {i: 0 if self._buffers[i] is None else len(self._buffers[i]) for i in free}
        fitting = [i for i in free if sizes[i] >= total]
        slot = min(fitting or free, key=sizes.__getitem__)  # the smallest that fits, or else the smallest to replace
        if not fitting:
            # Twice the size: pages are only mapped when written, and batches that vary in size then find room.
            storage = torch.UntypedStorage._new_shared(2 * total)
            self._buffers[slot] = torch.empty(0, dtype=torch.uint8).set_(storage)
        buffer = self._buffers[slot]
        views: Iterator[torch.Tensor] = iter(self._copy_into(buffer, tensors))
        self._free[info.id, slot] = False
        return (info.id, slot), buffer, _map_tensors(batch, lambda _: next(views))

    @staticmethod
    def _copy_into(buffer: torch.Tensor, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        views, offset = [], 0
        for tensor in tensors:
            view = buffer[offset : offset + _nbytes(tensor)].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor)
            views.append(view)
            offset += _aligned(_nbytes(tensor))
        return views

    def unpack(self, slot: Optional[Tuple[int, int]], buffer: Optional[torch.Tensor], batch: Any) -> Any:
        """In the training process: `batch`, its buffer watched until the batch's tensors are gone; frees the
        buffers of earlier batches that are gone."""
        still_in_use = []
        for in_use, ref in self._in_use:
            if ref.expired():
                self._free[in_use] = True
            else:
                still_in_use.append((in_use, ref))
        if slot is not None:
            still_in_use.append((slot, StorageWeakRef(buffer.untyped_storage())))
        self._in_use = still_in_use
        return batch
