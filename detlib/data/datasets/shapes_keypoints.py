"""
A synthetic keypoint dataset: squares and triangles whose corners are the keypoints.

Drawn like the shapes dataset (same backgrounds, colours, rasterizer, and the same rule that each
object keeps most of its area visible), but every object is upright up to a bounded rotation, so
that its corners have names: a square has "top_left", "top_right", "bottom_right" and
"bottom_left", a triangle "apex", "bottom_right" and "bottom_left"; the keypoints a class lacks
are unlabeled. A horizontal flip turns each left corner into a right one (`KEYPOINT_FLIP_MAP`).

Visibility follows COCO: 1 for a corner whose pixel a later object covers, 2 for the other corners
in the image, 0 (and x = y = 0) for one outside it. Keypoints are written
in COCO's convention (pixel indices: the exact vertex minus 0.5), so `load_coco_json`, which adds
the half pixel back, yields the exact vertices.
"""

import json
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .shapes import (
    _MIN_VISIBLE_FRACTION,
    SHAPES_CLASSES,
    _background,
    _generator_info,
    _object_color,
    _rasterize,
    _shape_polygon,
    _write_png,
    generate_shapes,
)

__all__ = [
    "KEYPOINT_SHAPES_CLASSES",
    "KEYPOINT_NAMES",
    "KEYPOINT_FLIP_MAP",
    "KeypointShapesSpec",
    "generate_keypoint_shapes",
    "render_keypoint_shapes_image",
]

KEYPOINT_SHAPES_CLASSES = ("square", "triangle")
KEYPOINT_NAMES = ("top_left", "top_right", "bottom_right", "bottom_left", "apex")
KEYPOINT_FLIP_MAP = (("top_left", "top_right"), ("bottom_left", "bottom_right"))

# The outline's first vertex points this way (degrees, image coordinates: y grows downwards)
# when the object is upright, and each outline vertex, in `_shape_polygon`'s order, is this
# entry of KEYPOINT_NAMES: a square's first vertex is its bottom-right corner, a triangle's its apex.
_UPRIGHT_ANGLE = {"square": 45.0, "triangle": -90.0}
_VERTEX_KEYPOINTS = {"square": (2, 3, 0, 1), "triangle": (4, 2, 3)}


@dataclass(frozen=True)
class KeypointShapesSpec:
    """Parameters of one split. Different values give a different dataset."""

    num_images: int
    seed: int
    image_size: Tuple[int, int] = (128, 128)  # (height, width)
    max_objects: int = 3
    radius_range: Tuple[float, float] = (12.0, 30.0)  # center to corner, pixels
    # Objects turn at most this far from upright (degrees), so that corner names stay unambiguous:
    # a square turned by 45 degrees, or a triangle by 60, could be named two ways.
    max_rotation: float = 25.0
    # Tells these splits apart from the plain shapes ones on disk; bump when the drawing changes.
    kind: str = "keypoints-v1"


def _place_object(rng: np.random.Generator, spec: KeypointShapesSpec, objects: List[dict]) -> Optional[dict]:
    """
    A new object (drawn on top of `objects`) that leaves each of them at least
    _MIN_VISIBLE_FRACTION of its area visible; None if ten tries fail. The object is a dict with
    `category_id` (into KEYPOINT_SHAPES_CLASSES), `mask`, `full_area` and `vertices` (N x 2).
    """
    height, width = spec.image_size
    lo, hi = spec.radius_range
    for _ in range(10):
        category = int(rng.integers(len(KEYPOINT_SHAPES_CLASSES)))
        name = KEYPOINT_SHAPES_CLASSES[category]
        radius = rng.uniform(lo, hi)
        center = rng.uniform([radius * 0.5, radius * 0.5], [width - radius * 0.5, height - radius * 0.5])
        angle = np.deg2rad(_UPRIGHT_ANGLE[name] + rng.uniform(-spec.max_rotation, spec.max_rotation))
        # Rounded as written to JSON, so that the file's keypoints are the painted corners.
        vertices = np.round(_shape_polygon(SHAPES_CLASSES.index(name), center, radius, angle), 2)
        mask = _rasterize(vertices, height, width)
        area = int(mask.sum())
        if area < 0.5 * lo * lo:
            continue
        if all((obj["mask"] & ~mask).sum() >= _MIN_VISIBLE_FRACTION * obj["full_area"] for obj in objects):
            return {"category_id": category, "mask": mask, "full_area": area, "vertices": vertices}
    return None


def _keypoints(obj: dict, covered: np.ndarray) -> np.ndarray:
    """The object's K x 3 keypoints (x, y, visibility); `covered` is the union of later objects."""
    height, width = covered.shape
    keypoints = np.zeros((len(KEYPOINT_NAMES), 3))
    for slot, (x, y) in zip(_VERTEX_KEYPOINTS[KEYPOINT_SHAPES_CLASSES[obj["category_id"]]], obj["vertices"]):
        if not (0 <= x <= width and 0 <= y <= height):
            continue
        row, col = min(int(y), height - 1), min(int(x), width - 1)
        keypoints[slot] = (x, y, 1 if covered[row, col] else 2)
    return keypoints


def render_keypoint_shapes_image(spec: KeypointShapesSpec, index: int) -> Tuple[np.ndarray, List[dict]]:
    """
    Draws image `index` of a split.

    Returns the RGB uint8 H x W x 3 image and its objects: dicts with `category_id` (0-based index
    into KEYPOINT_SHAPES_CLASSES), `mask` (H x W bool, the visible pixels) and `keypoints`
    (K x 3: x, y in continuous pixel coordinates, visibility).
    """
    rng = np.random.default_rng([spec.seed, index])
    image = _background(rng, *spec.image_size)
    objects: List[dict] = []
    for _ in range(rng.integers(1, spec.max_objects + 1)):
        new = _place_object(rng, spec, objects)
        if new is None:
            continue
        for obj in objects:
            obj["mask"] = obj["mask"] & ~new["mask"]
        image[new["mask"]] = _object_color(rng, image[new["mask"]].mean(axis=0))
        objects.append(new)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    covered = np.zeros(spec.image_size, dtype=bool)
    for obj in reversed(objects):  # the objects drawn after it cover an object's corners
        obj["keypoints"] = _keypoints(obj, covered)
        covered |= obj["mask"]
    return image, [{k: obj[k] for k in ("category_id", "mask", "keypoints")} for obj in objects]


def _annotation(obj: dict, image_id: int, ann_id: int) -> dict:
    ys, xs = np.nonzero(obj["mask"])
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    keypoints = obj["keypoints"].copy()
    labeled = keypoints[:, 2] > 0
    keypoints[labeled, :2] -= 0.5  # COCO's pixel-index convention
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_id"] + 1,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": int(obj["mask"].sum()),
        "keypoints": [round(float(v), 2) for v in keypoints.ravel()],
        "num_keypoints": int(labeled.sum()),
        "iscrowd": 0,
    }


def _write_split(spec: KeypointShapesSpec, out_dir: str) -> None:
    os.makedirs(os.path.join(out_dir, "images"))
    images, annotations = [], []
    height, width = spec.image_size
    for index in range(spec.num_images):
        image, objects = render_keypoint_shapes_image(spec, index)
        file_name = f"{index:06d}.png"
        _write_png(image, out_dir, file_name)
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append(_annotation(obj, index + 1, len(annotations) + 1))
    categories = [
        {"id": i + 1, "name": name, "keypoints": list(KEYPOINT_NAMES), "skeleton": []}
        for i, name in enumerate(KEYPOINT_SHAPES_CLASSES)
    ]
    coco = {
        "info": {"description": "detlib synthetic keypoint shapes", "generator": _generator_info(spec)},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    with open(os.path.join(out_dir, "annotations.json"), "w") as f:
        json.dump(coco, f)


def generate_keypoint_shapes(spec: KeypointShapesSpec, split_dir: str) -> str:
    """Like `generate_shapes`: makes sure `split_dir` holds the split, returns its `annotations.json`."""
    return generate_shapes(spec, split_dir, _write_split)
