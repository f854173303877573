import json
import logging
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from detlib.data import BadSampleError, DatasetCatalog, MetadataCatalog
from detlib.data.bad_samples import skip_bad_samples
from detlib.data.datasets import convert_to_coco_dict, load_coco_json, register_coco_instances
from detlib.structures import BoxMode


def test_load_maps_noncontiguous_category_ids_in_id_order(tiny_coco):
    records = load_coco_json(str(tiny_coco / "annotations.json"), str(tiny_coco), "tiny_load")
    meta = MetadataCatalog.get("tiny_load")
    # ids 3 (ring) and 7 (triangle) -> 0 and 1, in increasing id order
    assert meta.thing_classes == ["ring", "triangle"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    by_id = {r["image_id"]: r for r in records}
    assert set(by_id) == {10, 11, 12}
    r10 = by_id[10]
    assert r10["file_name"] == str(tiny_coco / "10.png")
    assert (r10["height"], r10["width"]) == (40, 60)
    tri, crowd = r10["annotations"]
    assert tri["category_id"] == 1 and tri["bbox_mode"] == BoxMode.XYWH_ABS
    assert tri["bbox"] == [10.0, 5.0, 30.0, 25.0]
    assert tri["segmentation"] == [[10.0, 5.0, 40.0, 5.0, 10.0, 30.0]]
    assert crowd["iscrowd"] == 1 and crowd["category_id"] == 0
    assert by_id[12]["annotations"] == []
    MetadataCatalog.remove("tiny_load")


def test_uncompressed_rle_is_compressed(tmp_path, tiny_coco):
    data = json.loads((tiny_coco / "annotations.json").read_text())
    mask = np.zeros((40, 60), np.uint8)
    mask[3:9, 20:31] = 1
    # Uncompressed RLE counts run column by column (Fortran order), starting with zeros.
    flat = mask.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    data["annotations"][0]["segmentation"] = {"size": [40, 60], "counts": runs}
    path = tmp_path / "uncompressed.json"
    path.write_text(json.dumps(data))
    records = load_coco_json(str(path), str(tiny_coco))
    segm = records[0]["annotations"][0]["segmentation"]
    assert isinstance(segm["counts"], bytes)
    np.testing.assert_array_equal(mask_util.decode(segm), mask)


def test_loads_parity_annotations_like_detectron2(parity_dir):
    records = load_coco_json(str(parity_dir / "annotations.json"), str(parity_dir / "images"))
    raw = json.loads((parity_dir / "annotations.json").read_text())
    assert [r["image_id"] for r in records] == [img["id"] for img in raw["images"]]
    img1 = records[1]
    assert len(img1["annotations"][0]["segmentation"]) == 2  # one instance made of two polygons
    assert [a["category_id"] for a in records[0]["annotations"]] == [
        a["category_id"] - 1 for a in raw["annotations"] if a["image_id"] == 1
    ]


def _write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ([1, 2, 3], "top level is a list"),
        ({"annotations": [], "categories": []}, "field 'images'"),
        ({"images": [], "annotations": []}, "field 'categories'"),
    ],
)
def test_non_coco_json_is_rejected_naming_file_and_field(tmp_path, content, fragment):
    path = _write(tmp_path, content)
    with pytest.raises(BadSampleError) as e:
        load_coco_json(path, str(tmp_path))
    assert path in str(e.value) and fragment in str(e.value)
    with skip_bad_samples(), pytest.raises(BadSampleError):  # a whole file cannot be skipped
        load_coco_json(path, str(tmp_path))


def _bad_cases():
    return {
        "negative box": (dict(bbox=[1.0, 2.0, -3.0, 4.0]), "field 'bbox'", "negative"),
        "nan box": (dict(bbox=[1.0, float("nan"), 3.0, 4.0]), "field 'bbox'", "non-finite"),
        "unknown category": (dict(category_id=5), "field 'category_id'", "not in 'categories'"),
        "missing image": (dict(image_id=99), "field 'image_id'", "not in 'images'"),
        "rle of wrong size": (
            dict(segmentation={"size": [2, 2], "counts": "04"}),
            "field 'segmentation.size'",
            "(h, w)",
        ),
        "odd polygon": (dict(segmentation=[[1.0, 2.0, 3.0, 4.0, 5.0]]), "field 'segmentation'", "even-length"),
        "nan polygon": (dict(segmentation=[[1.0, 2.0, 3.0, 4.0, 5.0, math.nan]]), "field 'segmentation'", "non-finite"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_annotation_raises_naming_file_annotation_and_field(tmp_path, tiny_coco, case):
    change, field, reason = _bad_cases()[case]
    data = json.loads((tiny_coco / "annotations.json").read_text())
    data["annotations"][2].update(change)  # annotation id 3
    path = _write(tmp_path, data)  # json.dumps writes NaN as the (non-standard) literal NaN
    with pytest.raises(BadSampleError) as e:
        load_coco_json(path, str(tiny_coco))
    msg = str(e.value)
    assert path in msg and "annotation id 3" in msg and field in msg and reason in msg


def test_bad_annotations_are_skipped_and_counted_when_asked(tmp_path, tiny_coco, caplog):
    data = json.loads((tiny_coco / "annotations.json").read_text())
    data["annotations"][0]["bbox"] = [0, 0, math.nan, 1]
    data["annotations"][2]["category_id"] = 42
    path = _write(tmp_path, data)
    with caplog.at_level(logging.WARNING), skip_bad_samples():
        records = load_coco_json(path, str(tiny_coco))
    assert sum(len(r["annotations"]) for r in records) == 1  # only the crowd box is left
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 skipped so far" in w and "annotation id 1" in w for w in warnings)
    assert any("2 skipped so far" in w and "annotation id 3" in w for w in warnings)
    assert any("Skipped 2 bad annotations" in w for w in warnings)


def test_polygons_without_area_are_left_out_with_a_warning(tmp_path, tiny_coco, caplog):
    data = json.loads((tiny_coco / "annotations.json").read_text())
    triangle = data["annotations"][0]["segmentation"][0]
    data["annotations"][0]["segmentation"] = [[1.0, 2.0, 3.0, 4.0], triangle]  # a 2-point polygon + a real one
    data["annotations"][2]["segmentation"] = [[1.0, 2.0]]  # nothing left: the annotation goes
    path = _write(tmp_path, data)
    with caplog.at_level(logging.WARNING):
        records = {r["image_id"]: r for r in load_coco_json(path, str(tiny_coco))}
    assert records[10]["annotations"][0]["segmentation"] == [triangle]
    assert records[11]["annotations"] == []
    assert any("Left out 1 annotations" in r.getMessage() and "[3]" in r.getMessage() for r in caplog.records)


def test_convert_to_coco_dict_round_trips_through_pycocotools(tmp_path, tiny_coco):
    name = "tiny_convert"
    register_coco_instances(name, {}, str(tiny_coco / "annotations.json"), str(tiny_coco))
    try:
        coco_dict = convert_to_coco_dict(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert sorted(c["id"] for c in coco_dict["categories"]) == [3, 7]  # original ids restored
    path = tmp_path / "converted.json"
    path.write_text(json.dumps(coco_dict))
    api = COCO(str(path))
    original = COCO(str(tiny_coco / "annotations.json"))
    for ann in original.dataset["annotations"]:
        (converted,) = [a for a in api.dataset["annotations"] if a["bbox"] == ann["bbox"]]
        assert converted["category_id"] == ann["category_id"]
        assert converted["iscrowd"] == ann["iscrowd"]
        np.testing.assert_array_equal(api.annToMask(converted), original.annToMask(ann))
        assert converted["area"] == pytest.approx(ann["area"])


def _with_keypoints(tiny_coco, tmp_path, keypoints, names=("a", "b")):
    """The tiny dataset with `keypoints` on annotation id 3 and keypoint names on its category."""
    data = json.loads((tiny_coco / "annotations.json").read_text())
    data["annotations"][2]["keypoints"] = keypoints
    data["categories"][1]["keypoints"] = list(names)
    return _write(tmp_path, data)


def test_keypoints_are_loaded_at_pixel_centers_and_written_back_as_indices(tmp_path, tiny_coco):
    path = _with_keypoints(tiny_coco, tmp_path, [5, 10, 2, 0, 0, 0])
    records = load_coco_json(path, str(tiny_coco), "tiny_keypoints")
    try:
        ann = records[1]["annotations"][0]
        # COCO's integer pixel indices -> continuous coordinates of the pixel centers.
        assert ann["keypoints"] == [5.5, 10.5, 2, 0.5, 0.5, 0]
        assert "keypoints" not in records[0]["annotations"][0]
        DatasetCatalog.register("tiny_keypoints", lambda: records)
        written = convert_to_coco_dict("tiny_keypoints")["annotations"]
        assert written[2]["keypoints"] == [5, 10, 2, 0, 0, 0] and written[2]["num_keypoints"] == 1
        assert "keypoints" not in written[0]
    finally:
        DatasetCatalog.remove("tiny_keypoints")
        MetadataCatalog.remove("tiny_keypoints")


@pytest.mark.parametrize(
    "keypoints, reason",
    [
        ([5, 10, 2, 1, 1], "(x, y, v) triples"),
        ([5, 10, 2], "has 1 keypoints, but its category names 2"),
        ([5, 10, 3, 1, 1, 1], "not 0, 1 or 2"),
        ([5, math.inf, 2, 1, 1, 1], "non-finite"),
        ([5, "x", 2, 1, 1, 1], "numbers only"),
    ],
)
def test_bad_keypoints_raise_naming_file_annotation_and_field(tmp_path, tiny_coco, keypoints, reason):
    path = _with_keypoints(tiny_coco, tmp_path, keypoints)
    with pytest.raises(BadSampleError) as e:
        load_coco_json(path, str(tiny_coco))
    msg = str(e.value)
    assert path in msg and "annotation id 3" in msg and "field 'keypoints'" in msg and reason in msg
    with skip_bad_samples():
        assert sum(len(r["annotations"]) for r in load_coco_json(path, str(tiny_coco))) == 2
