"""Small COCO datasets written to a temporary directory, with their exact masks known."""

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest


@pytest.fixture
def parity_dir(d2_case) -> Path:
    return d2_case


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def write_tiny_coco(root: Path, *, mixed_masks: bool = True) -> dict:
    """
    Writes 3 RGB PNGs and a COCO json to `root`; returns the json dict.

    Image 10 (40x60, landscape): a triangle polygon (category 7) and a crowd box.
    Image 11 (50x30, portrait): a square ring as RLE (category 3) when `mixed_masks`, else a polygon.
    Image 12 (40x60): no annotations.
    Category ids 3 and 7 are not contiguous.
    """
    root.mkdir(parents=True, exist_ok=True)
    sizes = {10: (40, 60), 11: (50, 30), 12: (40, 60)}
    for image_id, (h, w) in sizes.items():
        img = np.full((h, w, 3), 40, np.uint8)
        img[..., 0] = np.arange(w, dtype=np.uint8)[None] * 3  # not symmetric: flips are visible
        cv2.imwrite(str(root / f"{image_id}.png"), img)
    ring = np.zeros((50, 30), np.uint8)
    ring[10:40, 5:25] = 1
    ring[18:32, 11:19] = 0
    ring_segm = _rle(ring) if mixed_masks else [[5, 10, 25, 10, 25, 40, 5, 40]]
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in sizes.items()],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 7,
                "bbox": [10.0, 5.0, 30.0, 25.0],
                "iscrowd": 0,
                "segmentation": [[10.0, 5.0, 40.0, 5.0, 10.0, 30.0]],
                "area": 375.0,
            },
            {
                "id": 2,
                "image_id": 10,
                "category_id": 3,
                "bbox": [45.0, 20.0, 10.0, 10.0],
                "iscrowd": 1,
                "segmentation": _rle(np.pad(np.ones((10, 10), np.uint8), ((20, 10), (45, 5)))),
                "area": 100.0,
            },
            {
                "id": 3,
                "image_id": 11,
                "category_id": 3,
                "bbox": [5.0, 10.0, 20.0, 30.0],
                "iscrowd": 0,
                "segmentation": ring_segm,
                "area": float(ring.sum()),
            },
        ],
        "categories": [{"id": 7, "name": "triangle"}, {"id": 3, "name": "ring"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return coco


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Path:
    """Directory holding the tiny COCO dataset (`annotations.json` + PNGs)."""
    write_tiny_coco(tmp_path / "tiny")
    return tmp_path / "tiny"
