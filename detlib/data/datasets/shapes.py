"""
A synthetic instance-segmentation dataset: coloured circles, squares, triangles and rings.

Images are drawn from a seed, so a split is byte-identical wherever it is generated. Each object is
a polygon (a ring is a polygon minus a smaller one) rasterized with pycocotools, and the pixels
painted are exactly that raster, so masks are exact: an unoccluded circle, square or triangle is
annotated with its polygon (which rasterizes back to the painted pixels), while a ring or an object
partly hidden by a later one is annotated with the RLE of its visible pixels. Boxes are the tight
pixel extent of the visible mask. Objects may overlap, but each keeps most of its area visible.

A split is written as `<dir>/annotations.json` (COCO instances format) and `<dir>/images/*.png`,
and regenerated only when missing or generated with different parameters.
"""

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

__all__ = ["SHAPES_CLASSES", "ShapesSpec", "generate_shapes", "render_shapes_image"]

logger = logging.getLogger(__name__)

SHAPES_CLASSES = ("circle", "square", "triangle", "ring")
# Bump when the drawing changes, so that datasets on disk are regenerated.
_GENERATOR_VERSION = 1

_MIN_VISIBLE_FRACTION = 0.6  # of an object's own area, after later objects are drawn over it
_MIN_COLOR_DISTANCE = 110.0  # RGB L2 distance between an object and the background under it


@dataclass(frozen=True)
class ShapesSpec:
    """Parameters of one split. Different values give a different dataset."""

    num_images: int
    seed: int
    image_size: Tuple[int, int] = (128, 128)  # (height, width)
    max_objects: int = 4
    radius_range: Tuple[float, float] = (10.0, 30.0)  # half the object's extent, pixels


# Vertices of each outline, evenly spaced on the circle of the object's radius.
_OUTLINE_VERTICES = {"circle": 48, "square": 4, "triangle": 3, "ring": 48}


def _shape_polygon(category: int, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Vertices (N x 2, XY pixels) of the outer outline of one object."""
    n = _OUTLINE_VERTICES[SHAPES_CLASSES[category]]
    theta = angle + 2 * np.pi * np.arange(n) / n
    return center + radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    rle = mask_util.frPyObjects([polygon.ravel().tolist()], height, width)
    return mask_util.decode(rle)[:, :, 0].astype(bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float32 H x W x 3 RGB background: solid, a linear gradient, or smooth blobs of colour."""
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(rng.uniform(0, 255, 3), (height, width, 3)).astype(np.float32)
    if kind == 1:
        c0, c1 = rng.uniform(0, 255, (2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        t = xs * np.cos(angle) + ys * np.sin(angle)
        t = (t - t.min()) / max(t.max() - t.min(), 1.0)
        return (c0 + t[..., None] * (c1 - c0)).astype(np.float32)
    # Blobs vary around one colour, so that objects stand out from every part of the background.
    coarse = (rng.uniform(40, 215, 3) + rng.uniform(-40, 40, (4, 4, 3))).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255)


def _object_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far from `under` (the mean background colour below the object)."""
    for _ in range(20):
        color = rng.uniform(0, 255, 3)
        if np.linalg.norm(color - under) >= _MIN_COLOR_DISTANCE:
            return color
    return 255.0 - under  # the complement is always far enough


def _place_object(rng: np.random.Generator, spec: ShapesSpec, objects: List[dict]) -> Optional[dict]:
    """
    Samples a new object (drawn on top of `objects`) that leaves each of them at least
    _MIN_VISIBLE_FRACTION of its area visible and is itself mostly inside the image; None if ten
    tries fail. The object is a dict with `category_id`, `mask` (its full raster), `full_area`
    and `polygon` (flat XY list, None for a ring).
    """
    height, width = spec.image_size
    lo, hi = spec.radius_range
    for _ in range(10):
        category = int(rng.integers(len(SHAPES_CLASSES)))
        radius = rng.uniform(lo, hi)
        center = rng.uniform([radius * 0.5, radius * 0.5], [width - radius * 0.5, height - radius * 0.5])
        # Rounded as written to JSON, so that the file's polygon rasterizes to the painted pixels.
        polygon = np.round(_shape_polygon(category, center, radius, rng.uniform(0, 2 * np.pi)), 2)
        mask = _rasterize(polygon, height, width)
        is_ring = SHAPES_CLASSES[category] == "ring"
        if is_ring:
            hole = np.round(center + (polygon - center) * rng.uniform(0.4, 0.65), 2)
            mask &= ~_rasterize(hole, height, width)
        area = int(mask.sum())
        if area < 0.5 * lo * lo:
            continue
        if all((obj["mask"] & ~mask).sum() >= _MIN_VISIBLE_FRACTION * obj["full_area"] for obj in objects):
            return {
                "category_id": category,
                "mask": mask,
                "full_area": area,
                "polygon": None if is_ring else polygon.ravel().tolist(),
            }
    return None


def render_shapes_image(spec: ShapesSpec, index: int) -> Tuple[np.ndarray, List[dict]]:
    """
    Draws image `index` of a split.

    Returns the RGB uint8 H x W x 3 image and its objects: dicts with `category_id` (0-based index
    into SHAPES_CLASSES), `mask` (H x W bool, the visible pixels) and `polygon` (flat XY list when
    the object is an unoccluded polygon, whose raster is then its mask; else None).
    """
    rng = np.random.default_rng([spec.seed, index])
    image = _background(rng, *spec.image_size)
    objects: List[dict] = []
    for _ in range(rng.integers(1, spec.max_objects + 1)):
        new = _place_object(rng, spec, objects)
        if new is None:
            continue
        for obj in objects:
            if (obj["mask"] & new["mask"]).any():
                obj["mask"] = obj["mask"] & ~new["mask"]
                obj["polygon"] = None  # the polygon no longer describes the visible pixels
        image[new["mask"]] = _object_color(rng, image[new["mask"]].mean(axis=0))
        objects.append(new)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, [{k: obj[k] for k in ("category_id", "mask", "polygon")} for obj in objects]


def _annotation(obj: dict, image_id: int, ann_id: int) -> dict:
    mask = obj["mask"]
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if obj["polygon"] is not None:
        segmentation = [obj["polygon"]]
    else:
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        segmentation = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_id"] + 1,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": int(mask.sum()),
        "segmentation": segmentation,
        "iscrowd": 0,
    }


def _write_png(image: np.ndarray, out_dir: str, file_name: str) -> None:
    """Writes an RGB uint8 image as `out_dir/images/file_name`."""
    ok, png = cv2.imencode(".png", image[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"Could not encode synthetic image {file_name}.")
    with open(os.path.join(out_dir, "images", file_name), "wb") as f:
        f.write(png.tobytes())


def _write_split(spec: ShapesSpec, out_dir: str) -> None:
    os.makedirs(os.path.join(out_dir, "images"))
    images, annotations = [], []
    height, width = spec.image_size
    for index in range(spec.num_images):
        image, objects = render_shapes_image(spec, index)
        file_name = f"{index:06d}.png"
        _write_png(image, out_dir, file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append(_annotation(obj, image_id, len(annotations) + 1))
    coco = {
        "info": {"description": "detlib synthetic shapes", "generator": _generator_info(spec)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(SHAPES_CLASSES)],
    }
    with open(os.path.join(out_dir, "annotations.json"), "w") as f:
        json.dump(coco, f)


def _generator_info(spec) -> dict:
    # As read back from JSON (tuples become lists), so that it compares equal to the file's.
    info = json.loads(json.dumps(asdict(spec)))
    info["version"] = _GENERATOR_VERSION
    return info


def _existing_info(json_file: str) -> Optional[dict]:
    try:
        with open(json_file) as f:
            return json.load(f)["info"]["generator"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def generate_shapes(spec, split_dir: str, write_split: Callable[..., None] = _write_split) -> str:
    """
    Makes sure `split_dir` holds the split described by `spec`, generating it if it is missing or
    was made with other parameters. Returns the path of its `annotations.json`.

    `spec` is a `ShapesSpec`, or the dataclass of another synthetic dataset together with its
    `write_split(spec, out_dir)`, which writes `annotations.json` with `_generator_info(spec)`
    as its `info.generator`, and the images.

    The split is written to a temporary sibling directory and renamed into place, so concurrent
    callers never see a partial dataset.
    """
    json_file = os.path.join(split_dir, "annotations.json")
    if _existing_info(json_file) == _generator_info(spec):
        return json_file
    parent = os.path.dirname(os.path.abspath(split_dir))
    os.makedirs(parent, exist_ok=True)
    logger.info("Generating %d synthetic shapes images (seed %d) in %s ...", spec.num_images, spec.seed, split_dir)
    tmp_dir = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(split_dir)}.")
    try:
        write_split(spec, os.path.join(tmp_dir, "split"))
        if os.path.exists(split_dir) and _existing_info(json_file) != _generator_info(spec):
            shutil.rmtree(split_dir)
        try:
            os.rename(os.path.join(tmp_dir, "split"), split_dir)
        except OSError:
            # Another process finished the same split first; its content is identical.
            if _existing_info(json_file) != _generator_info(spec):
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return json_file
