import logging
from itertools import islice

import pytest
import torch

from detlib.config import get_cfg
from detlib.data import (
    BadSampleError,
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detlib.data.datasets import register_coco_instances
from detlib.data.samplers import TrainingSampler


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
        _records(10), mapper=_mapper, sampler=TrainingSampler(10, seed=0, rank=0, world_size=1),
        total_batch_size=3, aspect_ratio_grouping=True,
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
