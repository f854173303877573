"""Semantic segmentation datasets stored as image files next to label PNGs."""

import logging
import os
from typing import Dict, List

from ..bad_samples import BadSampleError
from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = ["load_sem_seg", "register_sem_seg"]

logger = logging.getLogger(__name__)


def _files_by_stem(root: str, ext: str) -> Dict[str, str]:
    """Files under `root` (recursively) ending in `ext`, keyed by their path relative to `root` without it."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith(ext):
                path = os.path.join(directory, name)
                found[os.path.relpath(path, root)[: -len(ext)].rstrip(".")] = path
    return found


def load_sem_seg(gt_root: str, image_root: str, gt_ext: str = "png", image_ext: str = "jpg") -> List[dict]:
    """
    Pairs every label file under `gt_root` (pixel values are class ids) with the image under
    `image_root` at the same relative path and stem. Records hold `file_name` and
    `sem_seg_file_name`, sorted by that relative path. Labels without an image are left out with a
    warning (so that a subset's labels work with the full image directory); no label at all is an error.
    """
    labels = _files_by_stem(gt_root, gt_ext)
    if not labels:
        raise BadSampleError(f"No '*.{gt_ext}' label files under {gt_root}.")
    images = _files_by_stem(image_root, image_ext)
    missing = sorted(set(labels) - set(images))
    if missing:
        logger.warning(
            "%d label files under %s have no '.%s' image under %s (first: %s); they are left out.",
            len(missing),
            gt_root,
            image_ext,
            image_root,
            missing[0],
        )
    records = [
        {"file_name": images[stem], "sem_seg_file_name": labels[stem]} for stem in sorted(set(labels) & set(images))
    ]
    if not records:
        raise BadSampleError(f"None of the label files under {gt_root} has an image under {image_root}.")
    logger.info("Loaded %d images with semantic labels from %s.", len(records), gt_root)
    return records


def register_sem_seg(
    name: str, metadata: dict, gt_root: str, image_root: str, gt_ext: str = "png", image_ext: str = "jpg"
) -> None:
    """Registers a semantic segmentation dataset (`load_sem_seg`); its metadata gets `metadata`, the
    roots, `evaluator_type="sem_seg"` and, unless `metadata` sets it, `ignore_label=255`."""
    DatasetCatalog.register(name, lambda: load_sem_seg(gt_root, image_root, gt_ext, image_ext))
    MetadataCatalog.get(name).set(
        sem_seg_root=gt_root, image_root=image_root, evaluator_type="sem_seg", **{"ignore_label": 255, **metadata}
    )
