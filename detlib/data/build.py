"""Training and test data loaders: registered datasets -> batches of model input dicts."""
import logging
import operator
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.utils.data as data
from tabulate import tabulate

from detlib.config import configurable
from detlib.utils import comm
from detlib.utils.env import seed_all_rng

from . import bad_samples
from .catalog import DatasetCatalog, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, MapIterableDataset, ToIterableDataset
from .dataset_mapper import DatasetMapper
from .samplers import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler

__all__ = [
    "get_detection_dataset_dicts",
    "build_batch_data_loader",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "trivial_batch_collator",
]

logger = logging.getLogger(__name__)


def filter_images_with_only_crowd_annotations(dataset_dicts: List[dict]) -> List[dict]:
    """Keeps the records that have at least one non-crowd annotation."""
    kept = [d for d in dataset_dicts if any(a.get("iscrowd", 0) == 0 for a in d.get("annotations", []))]
    removed = len(dataset_dicts) - len(kept)
    logger.info("Removed %d images with no usable annotations; %d images left.", removed, len(kept))
    return kept


def print_instances_class_histogram(dataset_dicts: List[dict], class_names: Sequence[str]) -> None:
    """Logs how many (non-crowd) instances of each class the records hold."""
    classes = np.asarray(
        [a["category_id"] for d in dataset_dicts for a in d.get("annotations", []) if not a.get("iscrowd", 0)],
        dtype=np.int64,
    )
    counts = np.bincount(classes, minlength=len(class_names))
    rows = [(name, int(n)) for name, n in zip(class_names, counts)] + [("total", int(counts.sum()))]
    logger.info("Instances per category:\n%s", tabulate(rows, headers=["category", "#instances"], tablefmt="pipe"))


def get_detection_dataset_dicts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    check_consistency: bool = True,
    *,
    skip_bad_samples: bool = False,
) -> List[dict]:
    """
    Loads and concatenates registered datasets.

    Args:
        names: dataset name(s) in DatasetCatalog.
        filter_empty: drop images without a non-crowd annotation (for training).
        check_consistency: the datasets must share `thing_classes`.
        skip_bad_samples: drop bad annotations with a counted warning instead of raising.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("get_detection_dataset_dicts needs at least one dataset name.")
    all_dicts = []
    for name in names:
        with bad_samples.skip_bad_samples(skip_bad_samples):
            dicts = DatasetCatalog.get(name)
        if not dicts:
            raise ValueError(f"Dataset '{name}' is empty.")
        all_dicts.append(dicts)
    dataset_dicts = [d for dicts in all_dicts for d in dicts]

    has_instances = any("annotations" in d for d in dataset_dicts)
    if filter_empty and has_instances:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    if has_instances:
        classes = [MetadataCatalog.get(n).get("thing_classes") for n in names]
        if check_consistency and any(c != classes[0] for c in classes):
            raise ValueError(f"Datasets {list(names)} have different thing_classes: {classes}")
        if classes[0] is not None:
            print_instances_class_histogram(dataset_dicts, classes[0])
    if not dataset_dicts:
        raise ValueError(f"No images left in datasets {list(names)} after filtering.")
    return dataset_dicts


def trivial_batch_collator(batch: List) -> List:
    """A batch is the list of its items: the model takes `list[dict]`."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Seeds numpy, random and torch differently in each worker (from torch's per-worker seed)."""
    seed_all_rng((torch.initial_seed() + worker_id) % 2**31)


def build_batch_data_loader(
    dataset: data.Dataset,
    sampler: data.Sampler,
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = False,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    skip_bad_samples: bool = False,
) -> Union[data.DataLoader, AspectRatioGroupedDataset]:
    """
    Batches a map-style dataset in sampler order. `total_batch_size` is over all ranks; each rank
    yields `total_batch_size / world_size` items per batch.
    """
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"Total batch size ({total_batch_size}) must be a positive multiple of the number of ranks ({world_size})."
        )
    batch_size = total_batch_size // world_size
    iterable = ToIterableDataset(dataset, sampler, skip_bad_samples=skip_bad_samples)
    if aspect_ratio_grouping:
        loader = data.DataLoader(
            iterable,
            num_workers=num_workers,
            collate_fn=operator.itemgetter(0),  # one item at a time; grouping makes the batches
            worker_init_fn=worker_init_reset_seed,
        )
        grouped = AspectRatioGroupedDataset(loader, batch_size)
        if collate_fn is None:
            return grouped
        return MapIterableDataset(grouped, collate_fn)
    return data.DataLoader(
        iterable,
        batch_size=batch_size,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
        worker_init_fn=worker_init_reset_seed,
    )


def _train_loader_from_config(cfg, mapper=None, *, dataset=None, sampler=None) -> dict:
    if dataset is None:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            skip_bad_samples=cfg.DATALOADER.SKIP_BAD_SAMPLES,
        )
    if mapper is None:
        mapper = DatasetMapper(cfg, True)
    if sampler is None:
        name = cfg.DATALOADER.SAMPLER_TRAIN
        logger.info("Using training sampler %s.", name)
        if name == "TrainingSampler":
            sampler = TrainingSampler(len(dataset))
        elif name == "RepeatFactorTrainingSampler":
            factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
            )
            sampler = RepeatFactorTrainingSampler(factors)
        else:
            raise ValueError(
                f"DATALOADER.SAMPLER_TRAIN '{name}' is unknown; use 'TrainingSampler' or 'RepeatFactorTrainingSampler'."
            )
    return {
        "dataset": dataset,
        "sampler": sampler,
        "mapper": mapper,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "skip_bad_samples": cfg.DATALOADER.SKIP_BAD_SAMPLES,
    }


@configurable(from_config=_train_loader_from_config)
def build_detection_train_loader(
    dataset: Union[List[dict], data.Dataset],
    *,
    mapper: Optional[Callable],
    sampler: Optional[data.Sampler] = None,
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    skip_bad_samples: bool = False,
):
    """
    An endless training loader: yields lists of `total_batch_size / world_size` mapped records.

    Call as `build_detection_train_loader(cfg, mapper=None)` (everything from the config) or with
    explicit arguments. `dataset` is a list of records or a map-style dataset; `mapper` maps a
    record to the model's input dict (None: use items as they are); `sampler` yields indices
    (default: `TrainingSampler`). With `skip_bad_samples` (DATALOADER.SKIP_BAD_SAMPLES), records
    whose mapping raises `BadSampleError` are skipped with a counted warning.
    """
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if sampler is None:
        sampler = TrainingSampler(len(dataset))
    return build_batch_data_loader(
        dataset,
        sampler,
        total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        collate_fn=collate_fn,
        skip_bad_samples=skip_bad_samples,
    )


def _test_loader_from_config(cfg, dataset_name: Union[str, Sequence[str]], mapper=None) -> dict:
    dataset = get_detection_dataset_dicts(
        dataset_name, filter_empty=False, skip_bad_samples=cfg.DATALOADER.SKIP_BAD_SAMPLES
    )
    return {
        "dataset": dataset,
        "mapper": DatasetMapper(cfg, False) if mapper is None else mapper,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "skip_bad_samples": cfg.DATALOADER.SKIP_BAD_SAMPLES,
    }


@configurable(from_config=_test_loader_from_config)
def build_detection_test_loader(
    dataset: Union[List[dict], data.Dataset],
    *,
    mapper: Optional[Callable],
    sampler: Optional[data.Sampler] = None,
    batch_size: int = 1,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    skip_bad_samples: bool = False,
) -> data.DataLoader:
    """
    A finite loader visiting each record once, split among ranks by `InferenceSampler`; yields lists
    of `batch_size` mapped records (the last may be shorter).

    Call as `build_detection_test_loader(cfg, dataset_name, mapper=None)` or with explicit
    arguments. With `skip_bad_samples`, unreadable images are skipped with a counted warning (and
    so get no prediction); otherwise they raise.
    """
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if sampler is None:
        sampler = InferenceSampler(len(dataset))
    return data.DataLoader(
        ToIterableDataset(dataset, sampler, skip_bad_samples=skip_bad_samples),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
    )
