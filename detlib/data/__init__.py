"""Everything between files on disk and the `list[dict]` batches a model takes."""

from . import datasets, samplers, transforms  # noqa: F401  (datasets registers the built-in ones)
from .bad_samples import BadSampleError
from .build import (
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    trivial_batch_collator,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from .dataset_mapper import DatasetMapper

__all__ = [
    "BadSampleError",
    "build_batch_data_loader",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "get_detection_dataset_dicts",
    "trivial_batch_collator",
    "DatasetCatalog",
    "Metadata",
    "MetadataCatalog",
    "AspectRatioGroupedDataset",
    "DatasetFromList",
    "MapDataset",
    "ToIterableDataset",
    "DatasetMapper",
]
