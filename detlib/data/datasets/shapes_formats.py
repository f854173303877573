"""
The synthetic shapes dataset in the other builtin formats, so that each loader and evaluator runs
end to end without downloads: semantic PNGs, COCO panoptic (standard and Panoptic FPN's separated
layout), Pascal VOC XML and LVIS json.

Everything is derived from one shapes split (`generate_shapes`): its instance masks are disjoint
(each annotation holds its object's visible pixels), the pixels of no object are the stuff class
"background". Images are re-encoded as JPEG where a format names them `.jpg`.
"""

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from typing import Dict

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from .coco_panoptic import id2rgb, register_coco_panoptic, register_coco_panoptic_separated
from .lvis import register_lvis_instances
from .pascal_voc import register_pascal_voc
from .sem_seg import register_sem_seg
from .shapes import SHAPES_CLASSES, ShapesSpec, generate_shapes

__all__ = [
    "SHAPES_STUFF_CLASSES",
    "shapes_format_paths",
    "write_shapes_formats",
    "ensure_shapes_formats",
    "register_shapes_formats",
]

# Semantic classes: background, then the shapes (label = shape class + 1).
SHAPES_STUFF_CLASSES = ("background",) + SHAPES_CLASSES
_BACKGROUND_ID = len(SHAPES_CLASSES) + 1  # panoptic category id of the background stuff
_MARKER = "formats.json"  # the ShapesSpec the directory was written for
# LVIS frequency group of each shape class, so that APr, APc and APf are all defined.
_LVIS_FREQUENCY = ("f", "c", "r", "c")


def _masks(coco: dict, image: dict) -> list:
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    h, w = image["height"], image["width"]
    out = []
    for ann in anns:
        segm = ann["segmentation"]
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
        out.append((ann, mask_util.decode(rle).astype(bool)))
    return out


def _polygons(mask: np.ndarray) -> list:
    """Outer outlines of a mask as COCO polygons (holes, as a ring's, are filled: LVIS files hold polygons)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _voc_xml(image: dict, objects: list) -> str:
    body = ""
    for ann, _ in objects:
        x, y, w, h = ann["bbox"]  # tight pixel extent: pixels x .. x + w - 1, in 1-based indices x + 1 .. x + w
        body += (
            f"<object><name>{SHAPES_CLASSES[ann['category_id'] - 1]}</name><pose>Unspecified</pose><truncated>0</truncated>"
            "<difficult>0</difficult><bndbox>"
            f"<xmin>{int(x) + 1}</xmin><ymin>{int(y) + 1}</ymin><xmax>{int(x + w)}</xmax><ymax>{int(y + h)}</ymax>"
            "</bndbox></object>"
        )
    return (
        f"<annotation><size><width>{image['width']}</width><height>{image['height']}</height></size>{body}</annotation>"
    )


def shapes_format_paths(out_dir: str) -> Dict[str, str]:
    """Where `write_shapes_formats(spec, out_dir)` puts each format."""
    return {
        "images": os.path.join(out_dir, "jpg"),
        "sem_seg": os.path.join(out_dir, "sem_seg"),
        "panoptic": os.path.join(out_dir, "panoptic"),
        "panoptic_json": os.path.join(out_dir, "panoptic.json"),
        "panoptic_stuff": os.path.join(out_dir, "panoptic_stuff"),
        "instances_json": os.path.join(out_dir, "instances_jpg.json"),
        "voc": os.path.join(out_dir, "voc"),
        "lvis_json": os.path.join(out_dir, "lvis.json"),
    }


def write_shapes_formats(spec: ShapesSpec, out_dir: str) -> Dict[str, str]:
    """Generates the shapes split of `spec` under `out_dir/coco` and writes every other format next
    to it; returns `shapes_format_paths(out_dir)`."""
    instances_json = generate_shapes(spec, os.path.join(out_dir, "coco"))
    with open(instances_json) as f:
        coco = json.load(f)
    paths = shapes_format_paths(out_dir)
    for key in ("images", "sem_seg", "panoptic", "panoptic_stuff"):
        os.makedirs(paths[key], exist_ok=True)
    for sub in ("Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(paths["voc"], sub), exist_ok=True)
    os.makedirs(os.path.join(paths["voc"], "JPEGImages"), exist_ok=True)

    panoptic_anns, lvis_images, lvis_anns, voc_ids = [], [], [], []
    images_with = np.zeros(len(SHAPES_CLASSES), dtype=int)
    for image in coco["images"]:
        stem = os.path.splitext(image["file_name"])[0]
        pixels = cv2.imread(os.path.join(os.path.dirname(instances_json), "images", image["file_name"]))
        for directory in (paths["images"], os.path.join(paths["voc"], "JPEGImages")):
            cv2.imwrite(os.path.join(directory, stem + ".jpg"), pixels)
        objects = _masks(coco, image)
        semantic = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        segment_ids = np.full(semantic.shape, _BACKGROUND_ID * 1000, dtype=np.int64)
        segments = []
        for k, (ann, mask) in enumerate(objects):
            semantic[mask] = ann["category_id"]
            segment_ids[mask] = k + 1
            segments.append({"id": k + 1, "category_id": ann["category_id"], "iscrowd": 0, "area": int(mask.sum())})
            polygons = _polygons(mask)
            lvis_mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, *semantic.shape)))
            lvis_anns.append(
                {"id": len(lvis_anns) + 1, "image_id": image["id"], "category_id": ann["category_id"]}
                | {"bbox": ann["bbox"], "segmentation": polygons, "area": float(lvis_mask.sum())}
            )
        background = int((segment_ids == _BACKGROUND_ID * 1000).sum())
        if background:
            segments.append(
                {"id": _BACKGROUND_ID * 1000, "category_id": _BACKGROUND_ID, "iscrowd": 0, "area": background}
            )
        Image.fromarray(semantic).save(os.path.join(paths["sem_seg"], stem + ".png"))
        Image.fromarray(np.where(semantic > 0, 0, 1).astype(np.uint8)).save(
            os.path.join(paths["panoptic_stuff"], stem + ".png")
        )
        Image.fromarray(id2rgb(segment_ids)).save(os.path.join(paths["panoptic"], stem + ".png"))
        panoptic_anns.append({"image_id": image["id"], "file_name": stem + ".png", "segments_info": segments})
        present = sorted({ann["category_id"] for ann, _ in objects})
        images_with[[c - 1 for c in present]] += 1
        lvis_images.append(
            {**image, "coco_url": f"http://shapes/jpg/{stem}.jpg"}
            | {"neg_category_ids": [c for c in range(1, len(SHAPES_CLASSES) + 1) if c not in present]}
            | {"not_exhaustive_category_ids": present[:1] if image["id"] % 2 else []}
        )
        with open(os.path.join(paths["voc"], "Annotations", stem + ".xml"), "w") as f:
            f.write(_voc_xml(image, objects))
        voc_ids.append(stem)

    with open(os.path.join(paths["voc"], "ImageSets", "Main", "val.txt"), "w") as f:
        f.write("\n".join(voc_ids) + "\n")
    things = [{"id": i + 1, "name": name, "isthing": 1} for i, name in enumerate(SHAPES_CLASSES)]
    categories = things + [{"id": _BACKGROUND_ID, "name": "background", "isthing": 0}]
    images = [{**im, "file_name": os.path.splitext(im["file_name"])[0] + ".jpg"} for im in coco["images"]]
    documents = {
        "panoptic_json": {"images": images, "annotations": panoptic_anns, "categories": categories},
        "instances_json": {**coco, "images": images},
        "lvis_json": {
            "images": lvis_images,
            "annotations": lvis_anns,
            "categories": [
                {**c, "synonyms": [c["name"]], "frequency": _LVIS_FREQUENCY[i], "image_count": int(images_with[i])}
                for i, c in enumerate(things)
            ],
        },
    }
    for key, document in documents.items():
        with open(paths[key], "w") as f:
            json.dump(document, f)
    return paths


def ensure_shapes_formats(spec: ShapesSpec, out_dir: str) -> Dict[str, str]:
    """
    `write_shapes_formats(spec, out_dir)` unless `out_dir` already holds them for `spec`. They are
    written to a temporary directory renamed into place, so processes that race (the ranks of a
    distributed run) never see a partial directory.
    """
    marker = json.dumps(asdict(spec), sort_keys=True)

    def complete(directory: str) -> bool:
        path = os.path.join(directory, _MARKER)
        return os.path.exists(path) and open(path).read() == marker

    if not complete(out_dir):
        parent = os.path.dirname(os.path.abspath(out_dir))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".shapes_formats.", dir=parent)
        try:
            write_shapes_formats(spec, tmp)
            with open(os.path.join(tmp, _MARKER), "w") as f:
                f.write(marker)
            if os.path.exists(out_dir) and not complete(out_dir):
                shutil.rmtree(out_dir, ignore_errors=True)  # made with other parameters
            try:
                os.rename(tmp, out_dir)
            except OSError:
                if not complete(out_dir):  # another process put something else there
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return shapes_format_paths(out_dir)


def register_shapes_formats(prefix: str, out_dir: str) -> Dict[str, str]:
    """
    Registers the formats written to `out_dir` by `write_shapes_formats`: `{prefix}_sem_seg`,
    `{prefix}_panoptic` (standard), `{prefix}_panoptic_separated` and `{prefix}_panoptic_stuffonly`,
    `{prefix}_voc` and `{prefix}_lvis`. Returns the dataset names by format.
    """
    paths = shapes_format_paths(out_dir)
    things = {i + 1: i for i in range(len(SHAPES_CLASSES))}
    names = {
        "sem_seg": f"{prefix}_sem_seg",
        "panoptic": f"{prefix}_panoptic",
        "panoptic_separated": f"{prefix}_panoptic_separated",
        "panoptic_stuffonly": f"{prefix}_panoptic_stuffonly",
        "voc": f"{prefix}_voc",
        "lvis": f"{prefix}_lvis",
    }
    register_sem_seg(names["sem_seg"], {"stuff_classes": list(SHAPES_STUFF_CLASSES)}, paths["sem_seg"], paths["images"])
    standard = {
        "thing_classes": list(SHAPES_CLASSES) + ["background"],
        "stuff_classes": list(SHAPES_CLASSES) + ["background"],
        "thing_dataset_id_to_contiguous_id": things,
        "stuff_dataset_id_to_contiguous_id": {_BACKGROUND_ID: len(SHAPES_CLASSES)},
    }
    register_coco_panoptic(
        names["panoptic"], standard, paths["images"], paths["panoptic"], paths["panoptic_json"], paths["instances_json"]
    )
    separated = {
        "thing_classes": list(SHAPES_CLASSES),
        "thing_dataset_id_to_contiguous_id": things,
        "stuff_classes": ["things", "background"],
        "stuff_dataset_id_to_contiguous_id": {0: 0, _BACKGROUND_ID: 1},
    }
    register_coco_panoptic_separated(
        f"{prefix}_panoptic",
        separated,
        paths["images"],
        paths["panoptic"],
        paths["panoptic_json"],
        paths["panoptic_stuff"],
        paths["instances_json"],
    )
    register_pascal_voc(names["voc"], paths["voc"], "val", 2007, class_names=SHAPES_CLASSES)
    register_lvis_instances(names["lvis"], {}, paths["lvis_json"], out_dir)
    return names
