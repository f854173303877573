from types import SimpleNamespace

import pytest
import torch

from detlib.data import shared_batches
from detlib.data.shared_batches import SharedBatchSlots
from detlib.structures import BitMasks, Boxes, Instances


@pytest.fixture
def as_worker(monkeypatch):
    """Run `pack` here as data-loader worker 0 would."""
    monkeypatch.setattr(shared_batches.data, "get_worker_info", lambda: SimpleNamespace(id=0, num_workers=1))


def _batch(seed):
    generator = torch.Generator().manual_seed(seed)
    instances = Instances((6, 5))
    instances.gt_boxes = Boxes(torch.rand(3, 4, generator=generator))
    instances.gt_classes = torch.randint(0, 9, (3,), generator=generator)
    instances.gt_masks = BitMasks(torch.rand(3, 6, 5, generator=generator) > 0.5)
    image = torch.randint(0, 256, (3, 6, 5), dtype=torch.uint8, generator=generator)
    return [0, {"image": image.transpose(1, 2), "instances": instances, "file_name": "a.jpg"}]  # not contiguous


def _assert_equal(batch, reference):
    assert batch[0] == reference[0] and batch[1]["file_name"] == reference[1]["file_name"]
    assert torch.equal(batch[1]["image"], reference[1]["image"])
    ours, theirs = batch[1]["instances"], reference[1]["instances"]
    assert ours.image_size == theirs.image_size
    assert torch.equal(ours.gt_boxes.tensor, theirs.gt_boxes.tensor)
    assert torch.equal(ours.gt_classes, theirs.gt_classes)
    assert torch.equal(ours.gt_masks.tensor, theirs.gt_masks.tensor)


def test_a_batch_moves_whole_into_one_buffer_and_back(as_worker):
    slots = SharedBatchSlots(num_workers=1, slots_per_worker=2)
    slot, buffer, packed = slots.pack(_batch(0))
    assert slot == (0, 0) and buffer.is_shared()
    tensors = [packed[1]["image"], packed[1]["instances"].gt_boxes.tensor, packed[1]["instances"].gt_masks.tensor]
    assert all(t.untyped_storage().data_ptr() == buffer.data_ptr() for t in tensors)
    _assert_equal(slots.unpack(slot, buffer, packed), _batch(0))


class _Batches(torch.utils.data.IterableDataset):
    def __iter__(self):
        for seed in range(1000):
            yield _batch(seed)


def _worker_batches(slots):
    """(slot, batch) of each batch a data-loader worker sends through `slots`."""
    loader = torch.utils.data.DataLoader(_Batches(), batch_size=None, num_workers=1, collate_fn=slots.pack)
    for slot, buffer, batch in loader:
        yield slot, slots.unpack(slot, buffer, batch)


def test_a_worker_uses_its_buffers_again_once_their_batches_are_gone():
    batches = _worker_batches(SharedBatchSlots(num_workers=1, slots_per_worker=6))
    for seed in range(12):
        slot, batch = next(batches)
        assert slot is not None
        _assert_equal(batch, _batch(seed))
        del batch


def test_a_worker_never_writes_into_a_batch_in_use():
    batches = _worker_batches(SharedBatchSlots(num_workers=1, slots_per_worker=2))
    held = [next(batches) for _ in range(8)]
    assert held[0][0] is not None and held[-1][0] is None  # the later ones sent as they are
    for seed, (_, batch) in enumerate(held):
        _assert_equal(batch, _batch(seed))


def test_outside_a_worker_nothing_is_packed():
    batch = _batch(0)
    assert SharedBatchSlots(num_workers=1).pack(batch) == (None, None, batch)
