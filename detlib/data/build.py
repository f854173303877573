"""Training and test data loaders: registered datasets -> batches of model input dicts."""

import functools
import logging
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.utils.data as data
from tabulate import tabulate

from detlib.config import configurable
from detlib.utils import comm
from detlib.utils.env import seed_all_rng

from . import bad_samples
from .batch_stream import BatchStream
from .catalog import DatasetCatalog, MetadataCatalog
from .common import DatasetFromList, MapDataset, ResumableLoader, ToIterableDataset
from .dataset_mapper import DatasetMapper
from .proposals import load_proposals_into_dataset
from .samplers import (
    DatasetMixSampler,
    EpochStreamSampler,
    InferenceSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from .shared_batches import SharedBatchSlots

__all__ = [
    "load_dataset_parts",
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


def _visible_keypoints(record: dict) -> int:
    """Visible keypoints of one image: flat (x, y, visibility) triplets per annotation, visibility > 0."""
    return sum(
        int((np.asarray(ann["keypoints"][2::3]) > 0).sum())
        for ann in record.get("annotations", ())
        if "keypoints" in ann
    )


def load_dataset_parts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    check_consistency: bool = True,
    *,
    min_keypoints: int = 0,
    skip_bad_samples: bool = False,
) -> List[List[dict]]:
    """
    Loads registered datasets, one list of records per name (what a per-dataset sampling mix
    needs); `get_detection_dataset_dicts` is their concatenation.

    Args:
        names: dataset name(s) in DatasetCatalog.
        filter_empty: drop images without a non-crowd annotation (for training).
        min_keypoints: drop images with fewer visible keypoints than this, over all their annotations.
        check_consistency: the datasets must share `thing_classes`.
        skip_bad_samples: drop bad annotations with a counted warning instead of raising.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("get_detection_dataset_dicts needs at least one dataset name.")
    parts = []
    for name in names:
        with bad_samples.skip_bad_samples(skip_bad_samples):
            dicts = DatasetCatalog.get(name)
        if not dicts:
            raise ValueError(f"Dataset '{name}' is empty.")
        parts.append(dicts)

    has_instances = any("annotations" in d for dicts in parts for d in dicts)
    if not has_instances:
        return parts
    if filter_empty:
        parts = [filter_images_with_only_crowd_annotations(dicts) for dicts in parts]
        for name, dicts in zip(names, parts):
            if not dicts:
                raise ValueError(f"No images left in dataset '{name}' after filtering.")
    if min_keypoints > 0:
        parts = [[d for d in dicts if _visible_keypoints(d) >= min_keypoints] for dicts in parts]
        for name, dicts in zip(names, parts):
            if not dicts:
                raise ValueError(f"No images of dataset '{name}' have {min_keypoints} visible keypoints.")
    classes = [MetadataCatalog.get(n).get("thing_classes") for n in names]
    if check_consistency and any(c != classes[0] for c in classes):
        raise ValueError(f"Datasets {list(names)} have different thing_classes: {classes}")
    if classes[0] is not None:
        print_instances_class_histogram([d for dicts in parts for d in dicts], classes[0])
    return parts


def get_detection_dataset_dicts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    check_consistency: bool = True,
    *,
    min_keypoints: int = 0,
    skip_bad_samples: bool = False,
) -> List[dict]:
    """Loads and concatenates registered datasets; arguments as for `load_dataset_parts`."""
    parts = load_dataset_parts(
        names, filter_empty, check_consistency, min_keypoints=min_keypoints, skip_bad_samples=skip_bad_samples
    )
    return [d for dicts in parts for d in dicts]


def trivial_batch_collator(batch: List) -> List:
    """A batch is the list of its items: the model takes `list[dict]`."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Seeds numpy, random and torch differently in each worker (from torch's per-worker seed)."""
    seed_all_rng((torch.initial_seed() + worker_id) % 2**31)


class _BatchCollator:
    """Makes a batch from a `BatchStream`'s `(ordinals, items)` with `collate_fn`: `(ordinals, batch)` with
    `with_ordinals`, else the batch; with `slots`, packed for sending (`SharedBatchSlots.pack`)."""

    def __init__(self, collate_fn: Callable, with_ordinals: bool, slots: Optional[SharedBatchSlots]):
        self.collate_fn = collate_fn
        self.with_ordinals = with_ordinals
        self.slots = slots

    def __call__(self, ordinals_and_items: Tuple[List[int], List]) -> Any:
        ordinals, items = ordinals_and_items
        batch = self.collate_fn(items)
        batch = (ordinals, batch) if self.with_ordinals else batch
        return batch if self.slots is None else self.slots.pack(batch)


class _LoadedBatches:
    """Endless batches of a `BatchStream`, made and collated whole in `num_workers` data-loader workers (or in
    this process) and sent through `SharedBatchSlots`; each iteration starts its own workers."""

    def __init__(self, batches: BatchStream, *, num_workers: int, collate_fn: Callable, with_ordinals: bool):
        self.batches = batches
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.with_ordinals = with_ordinals

    def __iter__(self) -> Iterator:
        slots = SharedBatchSlots(self.num_workers) if self.num_workers > 0 else None
        # A positioned stream seeds its workers from its own seed, not from the global generator: a
        # resumed run then starts its loader without drawing from the random state it restored.
        generator = torch.Generator().manual_seed(self.batches.sampler.seed) if self.with_ordinals else None
        loader = data.DataLoader(
            self.batches,
            batch_size=None,  # the stream yields whole batches
            num_workers=self.num_workers,
            collate_fn=_BatchCollator(self.collate_fn, self.with_ordinals, slots),
            worker_init_fn=worker_init_reset_seed,
            generator=generator,
        )
        for batch in loader:
            yield batch if slots is None else slots.unpack(*batch)


def build_batch_data_loader(
    dataset: data.Dataset,
    sampler: data.Sampler,
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = False,
    landscape: Optional[Sequence[bool]] = None,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    skip_bad_samples: bool = False,
) -> Iterable:
    """
    Batches a map-style dataset in sampler order. `total_batch_size` is over all ranks; each rank
    yields `total_batch_size / world_size` items per batch. Each batch is made and collated whole in
    one data-loader worker (see `BatchStream`). `landscape[i]`, whether item i is wider than tall
    when that is known before mapping, lets aspect-ratio grouping plan the batches on the sampler's
    indices: they are then the same for any number of workers. Over an `EpochStreamSampler` the
    loader is a `ResumableLoader`: its position can be saved and restored in constant time.
    """
    ranks = comm.get_world_size()
    per_rank, remainder = divmod(total_batch_size, ranks)
    if per_rank <= 0 or remainder:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total_batch_size} must be a positive multiple of the {ranks} ranks.")
    batches = BatchStream(
        dataset,
        sampler,
        per_rank,
        group_by_aspect_ratio=aspect_ratio_grouping,
        landscape=landscape,
        skip_bad_samples=skip_bad_samples,
    )
    make_batches = functools.partial(
        _LoadedBatches, batches, num_workers=num_workers, collate_fn=collate_fn or trivial_batch_collator
    )
    if isinstance(sampler, EpochStreamSampler):
        return ResumableLoader(sampler, functools.partial(make_batches, with_ordinals=True))
    return make_batches(with_ordinals=False)


def _training_sampler(cfg, dataset: Sequence, part_sizes: List[int]) -> data.Sampler:
    """The sampler DATALOADER.SAMPLER_TRAIN names, or a mix of the datasets at
    DATALOADER.SAMPLING_RATIOS."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    ratios = list(cfg.DATALOADER.SAMPLING_RATIOS)
    if ratios:
        if name != "TrainingSampler":
            raise ValueError(f"DATALOADER.SAMPLING_RATIOS cannot be combined with DATALOADER.SAMPLER_TRAIN '{name}'.")
        logger.info("Sampling datasets %s at ratios %s.", list(cfg.DATASETS.TRAIN), ratios)
        return DatasetMixSampler(part_sizes, ratios)
    logger.info("Using training sampler %s.", name)
    if name == "TrainingSampler":
        return TrainingSampler(len(dataset))
    if name == "RepeatFactorTrainingSampler":
        return RepeatFactorTrainingSampler(
            RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
            )
        )
    raise ValueError(
        f"DATALOADER.SAMPLER_TRAIN '{name}' is unknown; use 'TrainingSampler' or 'RepeatFactorTrainingSampler'."
    )


def _with_proposals(cfg, parts: List[List[dict]], names: Sequence[str], files: Sequence[str], key: str) -> None:
    """With MODEL.LOAD_PROPOSALS, load each dataset's proposal file (DATASETS.<key>, one per dataset) into its records."""
    if not cfg.MODEL.LOAD_PROPOSALS:
        return
    if len(files) != len(names):
        raise ValueError(
            f"MODEL.LOAD_PROPOSALS needs one DATASETS.{key} entry per dataset {list(names)}, got {list(files)}"
        )
    for records, proposal_file in zip(parts, files):
        load_proposals_into_dataset(records, proposal_file)


def _train_loader_from_config(cfg, mapper=None, *, dataset=None, sampler=None) -> dict:
    if dataset is None:
        parts = load_dataset_parts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            skip_bad_samples=cfg.DATALOADER.SKIP_BAD_SAMPLES,
        )
        _with_proposals(cfg, parts, cfg.DATASETS.TRAIN, cfg.DATASETS.PROPOSAL_FILES_TRAIN, "PROPOSAL_FILES_TRAIN")
        dataset = [d for dicts in parts for d in dicts]
    else:
        parts = [dataset]
    return dict(
        dataset=dataset,
        mapper=DatasetMapper(cfg, True) if mapper is None else mapper,
        sampler=_training_sampler(cfg, dataset, [len(p) for p in parts]) if sampler is None else sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        skip_bad_samples=cfg.DATALOADER.SKIP_BAD_SAMPLES,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
    )


def _mapped(dataset: Union[List[dict], data.Dataset], mapper: Optional[Callable]) -> data.Dataset:
    """A map-style dataset over a list of records (or a dataset), with `mapper` applied to items."""
    items = DatasetFromList(dataset, copy=False) if isinstance(dataset, list) else dataset
    return items if mapper is None else MapDataset(items, mapper)


def _landscape(dataset: Union[List[dict], data.Dataset]) -> Optional[np.ndarray]:
    """Whether each record is wider than tall, when a list of records that all carry their size."""
    if not isinstance(dataset, list) or not all("width" in r and "height" in r for r in dataset):
        return None
    return np.array([r["width"] > r["height"] for r in dataset], dtype=bool)


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
    whose mapping raises `BadSampleError` are skipped with a counted warning. Over the default
    sampler (any `EpochStreamSampler`) the loader is a `ResumableLoader`.
    """
    items = _mapped(dataset, mapper)
    return build_batch_data_loader(
        items,
        TrainingSampler(len(items)) if sampler is None else sampler,
        total_batch_size,
        num_workers=num_workers,
        skip_bad_samples=skip_bad_samples,
        aspect_ratio_grouping=aspect_ratio_grouping,
        landscape=_landscape(dataset) if aspect_ratio_grouping else None,
        collate_fn=collate_fn,
    )


def _test_loader_from_config(cfg, dataset_name: Union[str, Sequence[str]], mapper=None) -> dict:
    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name)
    parts = load_dataset_parts(names, filter_empty=False, skip_bad_samples=cfg.DATALOADER.SKIP_BAD_SAMPLES)
    if cfg.MODEL.LOAD_PROPOSALS:
        # The proposal file of each test dataset is the one at its position in DATASETS.TEST.
        tests, files = list(cfg.DATASETS.TEST), list(cfg.DATASETS.PROPOSAL_FILES_TEST)
        missing = [n for n in names if n not in tests or tests.index(n) >= len(files)]
        if missing:
            raise ValueError(
                f"MODEL.LOAD_PROPOSALS: no DATASETS.PROPOSAL_FILES_TEST entry for {missing} (DATASETS.TEST {tests}, "
                f"PROPOSAL_FILES_TEST {files})"
            )
        _with_proposals(cfg, parts, names, [files[tests.index(n)] for n in names], "PROPOSAL_FILES_TEST")
    dataset = [d for dicts in parts for d in dicts]
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
    items = _mapped(dataset, mapper)
    return data.DataLoader(
        ToIterableDataset(items, InferenceSampler(len(items)) if sampler is None else sampler, skip_bad_samples),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
    )
