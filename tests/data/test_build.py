import logging
from itertools import islice

import numpy as np
import pytest
import torch

from detlib.config import get_cfg
from detlib.data import (
    BadSampleError,
    DatasetCatalog,
    DatasetFromList,
    MapDataset,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detlib.data.datasets import register_coco_instances
from detlib.data.samplers import DatasetMixSampler, TrainingSampler


def _records(n, bad=()):
    """Fake records, landscape for even ids and portrait for odd ones."""
    return [
        {"image_id": i, "width": 20 if i % 2 == 0 else 10, "height": 10 if i % 2 == 0 else 20, "bad": i in bad}
        for i in range(n)
    ]


def _mapper(record):
    if record["bad"]:
        raise BadSampleError(f"img{record['image_id']}.png, image id {record['image_id']}: field 'file_name' is broken")
    return dict(record, image=torch.zeros(3, record["height"], record["width"], dtype=torch.uint8))


def test_train_loader_batches_and_groups_by_aspect_ratio():
    loader = build_detection_train_loader(
        _records(10),
        mapper=_mapper,
        sampler=TrainingSampler(10, seed=0, rank=0, world_size=1),
        total_batch_size=3,
        aspect_ratio_grouping=True,
    )
    batches = list(islice(iter(loader), 8))
    for batch in batches:
        assert len(batch) == 3
        assert len({d["width"] > d["height"] for d in batch}) == 1
    seen = [d["image_id"] for b in batches for d in b]
    assert set(seen) == set(range(10))


def test_train_loader_without_grouping_follows_sampler_order():
    sampler = TrainingSampler(6, seed=1, rank=0, world_size=1)
    loader = build_detection_train_loader(
        _records(6), mapper=_mapper, sampler=sampler, total_batch_size=2, aspect_ratio_grouping=False
    )
    got = [d["image_id"] for batch in islice(iter(loader), 6) for d in batch]
    assert got == list(islice(iter(sampler), 12))


def test_bad_samples_raise_by_default_and_are_skipped_and_counted_when_asked(caplog):
    records = _records(6, bad={1, 4})
    sampler = TrainingSampler(6, shuffle=False, seed=0, rank=0, world_size=1)
    loader = build_detection_train_loader(
        records, mapper=_mapper, sampler=sampler, total_batch_size=2, aspect_ratio_grouping=False
    )
    with pytest.raises(BadSampleError, match="image id 1"):
        next(iter(loader))

    loader = build_detection_train_loader(
        records, mapper=_mapper, sampler=sampler, total_batch_size=2, aspect_ratio_grouping=False, skip_bad_samples=True
    )
    with caplog.at_level(logging.WARNING):
        got = [d["image_id"] for batch in islice(iter(loader), 4) for d in batch]
    assert got == [0, 2, 3, 5, 0, 2, 3, 5]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("(1 skipped so far)" in m and "image id 1" in m for m in messages)
    assert any("(2 skipped so far)" in m and "image id 4" in m for m in messages)
    assert any("(3 skipped so far)" in m for m in messages)  # the second epoch counts on


@pytest.mark.parametrize("num_workers", [0, 2])
def test_test_loader_visits_each_image_once_in_order(num_workers):
    loader = build_detection_test_loader(_records(7), mapper=_mapper, num_workers=num_workers)
    assert len(loader) == 7
    assert [d["image_id"] for batch in loader for d in batch] == list(range(7))


def test_test_loader_skips_bad_images_when_asked():
    loader = build_detection_test_loader(_records(5, bad={2}), mapper=_mapper, skip_bad_samples=True)
    assert [d["image_id"] for batch in loader for d in batch] == [0, 1, 3, 4]


@pytest.fixture
def registered_tiny(tiny_coco):
    name = "tiny_build"
    register_coco_instances(name, {}, str(tiny_coco / "annotations.json"), str(tiny_coco))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_get_detection_dataset_dicts_filters_images_without_usable_annotations(registered_tiny):
    # image 10: triangle + crowd, image 11: ring, image 12: nothing
    assert [d["image_id"] for d in get_detection_dataset_dicts(registered_tiny)] == [10, 11]
    assert [d["image_id"] for d in get_detection_dataset_dicts(registered_tiny, filter_empty=False)] == [10, 11, 12]


def test_loaders_from_config(registered_tiny):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (registered_tiny,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (20,)
    cfg.INPUT.MIN_SIZE_TEST = 20
    cfg.MODEL.MASK_ON = True
    batch = next(iter(build_detection_train_loader(cfg)))
    assert len(batch) == 2
    for d in batch:
        assert min(d["image"].shape[1:]) == 20
        assert d["instances"].gt_masks is not None and len(d["instances"]) == 1

    test_batches = list(build_detection_test_loader(cfg, registered_tiny))
    assert [d["image_id"] for b in test_batches for d in b] == [10, 11, 12]
    assert all("instances" not in d for b in test_batches for d in b)


def test_unknown_sampler_name_is_an_error(registered_tiny):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (registered_tiny,)
    cfg.DATALOADER.SAMPLER_TRAIN = "NoSuchSampler"
    with pytest.raises(ValueError, match="NoSuchSampler"):
        build_detection_train_loader(cfg)


class _CountingMapper:
    """Records the image id of every record it decodes."""

    def __init__(self, random_shift=False):
        self.decoded = []
        self.random_shift = random_shift

    def __call__(self, record):
        self.decoded.append(record["image_id"])
        out = _mapper(record)
        if self.random_shift:  # an augmentation drawing from the global generators, in whatever process maps
            out["shift"] = float(np.random.rand()) + float(torch.rand(()))
        return out


def _resumable(mapper, grouping, num_workers=0, n=50, batch=3):
    return build_detection_train_loader(
        _records(n),
        mapper=mapper,
        sampler=TrainingSampler(n, seed=8, rank=0, world_size=1),
        total_batch_size=batch,
        aspect_ratio_grouping=grouping,
        num_workers=num_workers,
    )


def _summary(batch):
    return [(d["image_id"], d.get("shift")) for d in batch]


@pytest.mark.parametrize("grouping", [False, True])
def test_resumed_loader_continues_the_stream_without_decoding_what_was_consumed(grouping):
    original = _resumable(_CountingMapper(), grouping)
    batches = iter(original)
    consumed = [next(batches) for _ in range(5)]
    state = original.state_dict()
    following = [next(batches) for _ in range(3)]

    mapper = _CountingMapper()
    resumed = _resumable(mapper, grouping)
    resumed.load_state_dict(state)
    resumed_batches = iter(resumed)
    assert mapper.decoded == []
    assert [_summary(next(resumed_batches)) for _ in range(3)] == [_summary(b) for b in following]
    consumed_ids = {d["image_id"] for b in consumed for d in b}  # 15 of 50 ids: all in the first epoch
    assert not consumed_ids & set(mapper.decoded)
    if not grouping:
        assert len(mapper.decoded) == 9  # exactly the 3 batches returned
    else:  # at most the items grouping had held back, besides those returned
        assert len(mapper.decoded) <= 9 + len(state["consumed_ahead"]) + 2 * 2


@pytest.mark.parametrize("grouping", [False, True])
def test_resumed_loader_with_workers_repeats_random_augmentation(grouping):
    original = _resumable(_CountingMapper(random_shift=True), grouping=grouping, num_workers=2)
    batches = iter(original)
    for _ in range(4):
        next(batches)
    state = original.state_dict()
    following = [_summary(next(batches)) for _ in range(4)]
    del batches

    resumed = _resumable(_CountingMapper(random_shift=True), grouping=grouping, num_workers=2)
    resumed.load_state_dict(state)
    resumed_batches = iter(resumed)
    assert [_summary(next(resumed_batches)) for _ in range(4)] == following


def _register_list(name, records):
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).thing_classes = ["thing"]


@pytest.fixture
def two_datasets():
    def records(first, n):
        annotation = {"bbox": [0, 0, 2, 2], "bbox_mode": 0, "category_id": 0, "iscrowd": 0}
        return [{"image_id": first + i, "width": 8, "height": 8, "annotations": [annotation]} for i in range(n)]

    names = ("mix_small", "mix_large")
    _register_list(names[0], records(0, 4))
    _register_list(names[1], records(100, 12))
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_sampling_ratios_from_config_mix_the_training_datasets(two_datasets):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = two_datasets
    cfg.DATALOADER.SAMPLING_RATIOS = (3.0, 1.0)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 4
    loader = build_detection_train_loader(cfg, mapper=lambda record: record)
    assert isinstance(loader.sampler, DatasetMixSampler)
    ids = [d["image_id"] for batch in islice(iter(loader), 500) for d in batch]
    small = sum(i < 100 for i in ids) / len(ids)
    assert abs(small - 0.75) < 4 * (0.75 * 0.25 / len(ids)) ** 0.5  # the small dataset, 3x weighted

    cfg.DATALOADER.SAMPLING_RATIOS = (1.0,)
    with pytest.raises(ValueError, match="1 sampling ratios given for 2 datasets"):
        build_detection_train_loader(cfg, mapper=lambda record: record)


def _oriented_records(n, seed=0):
    """Records of random orientation, as many landscape as portrait (so an epoch's items of each
    orientation fill whole batches of 3 when n / 2 is a multiple of 3)."""
    landscape = np.random.default_rng(seed).permutation(np.arange(n) % 2 == 0)
    return [
        {"image_id": i, "width": 20 if wide else 10, "height": 10 if wide else 20, "bad": False}
        for i, wide in enumerate(landscape)
    ]


def _grouped_reference(records, sampler, batch_size, num_batches):
    """Batches of image ids: the sampler's stream grouped by each record's orientation."""
    buckets, batches = {True: [], False: []}, []
    for index in sampler:
        record = records[index]
        bucket = buckets[record["width"] > record["height"]]
        bucket.append(record["image_id"])
        if len(bucket) == batch_size:
            batches.append(bucket[:])
            bucket.clear()
            if len(batches) == num_batches:
                return batches


@pytest.mark.parametrize("rank,world_size", [(0, 1), (1, 2)])
def test_grouped_batches_with_workers_equal_in_process_ones_and_the_grouped_stream(rank, world_size):
    records = _oriented_records(24)

    def loader(num_workers):
        return build_detection_train_loader(
            records,
            mapper=_CountingMapper(random_shift=True),
            sampler=TrainingSampler(24, seed=3, rank=rank, world_size=world_size),
            total_batch_size=3,
            num_workers=num_workers,
        )

    num_batches = 12
    in_process = [_summary(b) for b in islice(iter(loader(0)), num_batches)]
    with_workers = [_summary(b) for b in islice(iter(loader(2)), num_batches)]
    assert with_workers == in_process  # the random augmentation too
    reference = _grouped_reference(records, TrainingSampler(24, seed=3, rank=rank, world_size=world_size), 3, 12)
    assert [[image_id for image_id, _ in batch] for batch in with_workers] == reference
    for batch in with_workers:
        assert len({records[image_id]["width"] > records[image_id]["height"] for image_id, _ in batch}) == 1
    if world_size == 1:  # an epoch of 12 landscape and 12 portrait records is 8 whole batches: each id once
        assert sorted(image_id for batch in with_workers[:8] for image_id, _ in batch) == list(range(24))


def test_grouping_mapped_items_in_workers_sees_each_item_once():
    """A dataset object (no record sizes before mapping): each worker groups its own mapped items."""
    records = _oriented_records(24)
    loader = build_detection_train_loader(
        MapDataset(DatasetFromList(records), _mapper),
        mapper=None,
        sampler=TrainingSampler(24, seed=5, rank=0, world_size=1),
        total_batch_size=3,
        num_workers=2,
    )
    batches = list(islice(iter(loader), 16))  # two epochs' worth
    for batch in batches:
        assert len({d["width"] > d["height"] for d in batch}) == 1
    counts = np.bincount([d["image_id"] for b in batches for d in b], minlength=24)
    # Each of the 2 workers holds back at most 2 items of each orientation.
    assert counts.sum() == 48 and counts.max() <= 2 and (counts < 2).sum() <= 2 * 2 * 2


def test_bad_samples_skipped_in_workers_leave_no_item_out_or_twice():
    records = _oriented_records(24)
    for record in records[::5]:
        record["bad"] = True

    def batches(num_workers):
        loader = build_detection_train_loader(
            records,
            mapper=_CountingMapper(random_shift=True),
            sampler=TrainingSampler(24, seed=1, rank=0, world_size=1),
            total_batch_size=3,
            num_workers=num_workers,
            skip_bad_samples=True,
        )
        return list(islice(iter(loader), 12))  # about two epochs of the 19 good items

    with_workers, in_process = batches(2), batches(0)
    for batch in with_workers:
        assert len(batch) == 3 and len({d["width"] > d["height"] for d in batch}) == 1
    # An item's random shift is drawn from its stream ordinal: equal pairs are the same stream item.
    items = [(d["image_id"], d["shift"]) for b in with_workers for d in b]
    assert len(set(items)) == len(items)
    assert not {r["image_id"] for r in records if r["bad"]} & {image_id for image_id, _ in items}
    # The bad items shift the rest within each worker: the same items up to those the buckets hold
    # back (at most 2 of each orientation per worker, or in process).
    reference = {(d["image_id"], d["shift"]) for b in in_process for d in b}
    assert len(set(items) ^ reference) <= 2 * (2 * 2 * 2 + 2 * 2)
