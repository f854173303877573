"""Pascal VOC detection annotations (one XML file per image) -> detlib dataset records."""

import os
import xml.etree.ElementTree as ET
from typing import List, Sequence

from detlib.structures import BoxMode

from ..bad_samples import BadSampleError
from ..catalog import DatasetCatalog, MetadataCatalog
from .dataset_classes import PASCAL_VOC_CLASSES

__all__ = ["load_voc_instances", "register_pascal_voc"]


def _text(node: ET.Element, path: str, where: str) -> str:
    found = node.find(path)
    if found is None or found.text is None:
        raise BadSampleError(f"{where}: element '{path}' is missing.")
    return found.text.strip()


def _number(node: ET.Element, path: str, where: str) -> float:
    text = _text(node, path, where)
    try:
        return float(text)
    except ValueError as e:
        raise BadSampleError(f"{where}: element '{path}' is {text!r}, not a number.") from e


def _parse_annotation(xml_file: str, class_names: Sequence[str]) -> dict:
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise BadSampleError(f"{xml_file}: not valid XML ({e}).") from e
    record = {
        "height": int(_number(root, "size/height", xml_file)),
        "width": int(_number(root, "size/width", xml_file)),
    }
    instances = []
    for k, obj in enumerate(root.findall("object")):
        where = f"{xml_file}, object {k}"
        name = _text(obj, "name", where)
        if name not in class_names:
            raise BadSampleError(f"{where}: class '{name}' is not one of the dataset's {len(class_names)} classes.")
        x0, y0, x1, y1 = (_number(obj, f"bndbox/{key}", where) for key in ("xmin", "ymin", "xmax", "ymax"))
        difficult = obj.find("difficult")
        instances.append(
            {
                "category_id": list(class_names).index(name),
                # VOC boxes are 1-based inclusive pixel indices: pixel i spans [i - 1, i] in coordinates.
                "bbox": [x0 - 1.0, y0 - 1.0, x1, y1],
                "bbox_mode": BoxMode.XYXY_ABS,
                "difficult": int(difficult.text) if difficult is not None and difficult.text else 0,
            }
        )
    record["annotations"] = instances
    return record


def load_voc_instances(dirname: str, split: str, class_names: Sequence[str] = PASCAL_VOC_CLASSES) -> List[dict]:
    """
    Loads the images of `dirname/ImageSets/Main/{split}.txt` with their boxes from
    `dirname/Annotations/{id}.xml`. Records hold `file_name` (`JPEGImages/{id}.jpg`), `image_id`
    (the file id, a string), `height`, `width` and `annotations` with `category_id`, `bbox`
    (XYXY_ABS) and `difficult`; difficult objects are kept (training uses them, evaluation ignores them).
    """
    list_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    with open(list_file) as f:
        file_ids = [line.strip() for line in f if line.strip()]
    records = []
    for file_id in file_ids:
        record = _parse_annotation(os.path.join(dirname, "Annotations", file_id + ".xml"), class_names)
        record.update(file_name=os.path.join(dirname, "JPEGImages", file_id + ".jpg"), image_id=file_id)
        records.append(record)
    return records


def register_pascal_voc(
    name: str, dirname: str, split: str, year: int, class_names: Sequence[str] = PASCAL_VOC_CLASSES
) -> None:
    """Registers a VOC split; its metadata gets the classes, `dirname`, `year`, `split` and
    `evaluator_type="pascal_voc"`."""
    DatasetCatalog.register(name, lambda: load_voc_instances(dirname, split, class_names))
    MetadataCatalog.get(name).set(
        thing_classes=list(class_names), dirname=dirname, year=year, split=split, evaluator_type="pascal_voc"
    )
