import numpy as np
from pycocotools.coco import COCO

from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data import transforms as T
from detlib.data.datasets import (
    KEYPOINT_NAMES,
    KEYPOINT_SHAPES_CLASSES,
    KeypointShapesSpec,
    generate_keypoint_shapes,
    load_coco_json,
)
from detlib.data.datasets.builtin import register_keypoint_shapes
from detlib.data.datasets.shapes_keypoints import render_keypoint_shapes_image
from detlib.data.detection_utils import create_keypoint_hflip_indices, transform_keypoint_annotations

SPEC = KeypointShapesSpec(num_images=12, seed=3)


def _named(keypoints):
    return {name: kp for name, kp in zip(KEYPOINT_NAMES, keypoints) if kp[2] > 0}


def test_corners_are_named_by_their_place_and_lie_on_the_painted_object():
    seen = set()
    for index in range(SPEC.num_images):
        _, objects = render_keypoint_shapes_image(SPEC, index)
        for obj in objects:
            cls = KEYPOINT_SHAPES_CLASSES[obj["category_id"]]
            kp = obj["keypoints"]
            seen.add(cls)
            labeled = kp[:, 2] > 0
            assert kp[~labeled].tolist() == [[0, 0, 0]] * int((~labeled).sum())
            named = _named(kp)
            if cls == "square":
                assert "apex" not in named
            else:
                assert not {"top_left", "top_right"} & set(named)
            # Left corners are left of their right counterparts, top corners above bottom ones.
            for left, right in (("top_left", "top_right"), ("bottom_left", "bottom_right")):
                if left in named and right in named:
                    assert named[left][0] < named[right][0]
            for top, bottom in (("top_left", "bottom_left"), ("top_right", "bottom_right"), ("apex", "bottom_left")):
                if top in named and bottom in named:
                    assert named[top][1] < named[bottom][1]
            # A visible corner touches its object's pixels (the vertex is on the outline).
            for x, y, _ in kp[kp[:, 2] == 2]:
                row, col = int(y), int(x)
                window = obj["mask"][max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
                assert window.any()
    assert seen == set(KEYPOINT_SHAPES_CLASSES)


def test_split_round_trips_through_coco_and_the_loader(tmp_path):
    json_file = generate_keypoint_shapes(SPEC, str(tmp_path / "split"))
    api = COCO(json_file)  # pycocotools reads it, keypoint names included
    assert api.loadCats(1)[0]["keypoints"] == list(KEYPOINT_NAMES)
    records = load_coco_json(json_file, str(tmp_path / "split" / "images"))
    for record in records[:4]:
        _, objects = render_keypoint_shapes_image(SPEC, record["image_id"] - 1)
        for ann, obj in zip(record["annotations"], objects):
            # Written as COCO pixel indices, loaded back at the exact (2-decimal) vertices.
            loaded = np.asarray(ann["keypoints"]).reshape(-1, 3)
            labeled = obj["keypoints"][:, 2] > 0
            np.testing.assert_allclose(loaded[labeled], obj["keypoints"][labeled], atol=1e-9)
    num_keypoints = [a["num_keypoints"] for a in api.loadAnns(api.getAnnIds())]
    assert min(num_keypoints) >= 0 and max(num_keypoints) <= 4


def test_registered_split_flips_each_corner_into_its_mirror_name(tmp_path):
    name = "shapes_kp_test_tmp"
    register_keypoint_shapes(name, str(tmp_path / "split"), KeypointShapesSpec(num_images=3, seed=2))
    try:
        meta = MetadataCatalog.get(name)
        assert meta.keypoint_names == list(KEYPOINT_NAMES) and meta.thing_classes == list(KEYPOINT_SHAPES_CLASSES)
        indices = create_keypoint_hflip_indices(name)
        assert [KEYPOINT_NAMES[i] for i in indices] == ["top_right", "top_left", "bottom_left", "bottom_right", "apex"]
        # A flipped object's corners keep their geometric meaning: left of right, again.
        for record in DatasetCatalog.get(name):
            for ann in record["annotations"]:
                flipped = transform_keypoint_annotations(ann["keypoints"], [T.HFlipTransform(128)], (128, 128), indices)
                named = _named(flipped)
                if "bottom_left" in named and "bottom_right" in named:
                    assert named["bottom_left"][0] < named["bottom_right"][0]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_builtin_keypoint_splits_are_registered():
    assert {"shapes_kp_train", "shapes_kp_val", "keypoints_coco_2017_train", "keypoints_coco_2017_val"} <= set(
        DatasetCatalog.list()
    )
    assert MetadataCatalog.get("shapes_kp_val").evaluator_type == "coco"
