"""Large-scale jitter: ResizeScale and FixedSizeCrop against hand-computed values, against Detectron2's
transforms on the same inputs and random draws (when installed), and the mapper refitting boxes to
masks after the crop."""

import numpy as np
import pytest

from detlib.data import DatasetMapper
from detlib.data import transforms as T
from detlib.structures import BoxMode


def test_resize_scale_fits_the_scaled_target_keeping_aspect_ratio():
    aug = T.ResizeScale(min_scale=0.1, max_scale=2.0, target_height=1024, target_width=1024)
    # 100 x 200 at scale 0.5: fit in 512 x 512 -> factor min(5.12, 2.56) = 2.56 -> 256 x 512.
    tfm = aug.resize_for_scale((100, 200), 0.5)
    assert (tfm.h, tfm.w, tfm.new_h, tfm.new_w) == (100, 200, 256, 512)
    # 300 x 200 at scale 1.5: factor min(1536 / 300, 1536 / 200) = 5.12 -> 1536 x 1024.
    tfm = aug.resize_for_scale((300, 200), 1.5)
    assert (tfm.new_h, tfm.new_w) == (1536, 1024)


def test_resize_scale_draws_the_scale_uniformly():
    aug = T.ResizeScale(min_scale=0.5, max_scale=1.5, target_height=64, target_width=64)
    np.random.seed(3)
    expected_scale = np.random.uniform(0.5, 1.5)
    np.random.seed(3)
    image = np.zeros((32, 16, 3), np.uint8)
    out, _ = T.apply_augmentations([aug], image)
    factor = min(expected_scale * 64 / 32, expected_scale * 64 / 16)
    assert out.shape[:2] == (round(32 * factor), round(16 * factor))


def test_fixed_size_crop_crops_then_pads_to_the_crop_size():
    aug = T.FixedSizeCrop(crop_size=(256, 256), pad_value=128.0)
    image = np.arange(300 * 200 * 3, dtype=np.int64).reshape(300, 200, 3).astype(np.uint8)
    # Room: 300 - 256 = 44 rows, 0 columns; half way -> rows 22..277, all 200 columns, 56 columns of pad.
    tfm = aug.transform_for_offset((300, 200), 0.5)
    out = tfm.apply_image(image)
    assert out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out[:, :200], image[22:278])
    assert (out[:, 200:] == 128).all()
    boxes = tfm.apply_box(np.array([[10.0, 10.0, 50.0, 40.0], [0.0, 250.0, 100.0, 299.0]]))
    np.testing.assert_allclose(boxes, [[10, -12, 50, 18], [0, 228, 100, 277]])
    label_map = tfm.apply_segmentation(np.ones((300, 200), np.uint8))
    assert (label_map[:, 200:] == 255).all() and (label_map[:, :200] == 1).all()
    mask = tfm.apply_segmentation(np.ones((300, 200), bool))
    assert mask.dtype == bool and not mask[:, 200:].any() and mask[:, :200].all()


def test_fixed_size_crop_without_pad_keeps_a_smaller_image():
    tfm = T.FixedSizeCrop(crop_size=(64, 64), pad=False).transform_for_offset((40, 100), 1.0)
    assert tfm.apply_image(np.zeros((40, 100), np.uint8)).shape == (40, 64)


def test_mapper_recomputes_boxes_from_cropped_masks(tmp_path):
    import cv2

    image = np.zeros((100, 100, 3), np.uint8)
    path = str(tmp_path / "im.png")
    cv2.imwrite(path, image)

    # A triangle (40, 10), (90, 10), (90, 60): inside the top-left 50 x 50 crop only its tip x >= y + 30,
    # x <= 50 remains, whose box is [40, 10, 50, 20]; the clipped original box is [40, 10, 50, 50].
    def record(polygon, bbox):
        anno = {"bbox": bbox, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "segmentation": [polygon]}
        return {"file_name": path, "image_id": 1, "height": 100, "width": 100, "annotations": [anno]}

    class CropTopLeft(T.Augmentation):
        def get_transform(self, image):
            return T.FixedSizeCrop(crop_size=(50, 50)).transform_for_offset(image.shape[:2], 0.0)

    common = dict(augmentations=[CropTopLeft()], image_format="BGR", use_instance_mask=True)
    tip = record([40.0, 10.0, 90.0, 10.0, 90.0, 60.0], [40, 10, 90, 60])
    clipped = DatasetMapper(True, **common)(tip)["instances"]
    refit = DatasetMapper(True, recompute_boxes=True, **common)(tip)["instances"]
    np.testing.assert_allclose(clipped.gt_boxes.tensor.numpy(), [[40, 10, 50, 50]])
    np.testing.assert_allclose(refit.gt_boxes.tensor.numpy(), [[40, 10, 50, 20]], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lsj_matches_detectron2_on_the_same_draws(seed):
    d2_t = pytest.importorskip("detectron2.data.transforms")
    rng = np.random.RandomState(seed)
    h, w = rng.randint(50, 400, size=2)
    image = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
    boxes = np.array([[5.0, 7.0, w - 3.0, h / 2.0], [w / 3.0, h / 4.0, w / 2.0, h - 1.0]])
    polygon = np.array([[5.0, 5.0], [w - 5.0, 9.0], [w / 2.0, h - 4.0]])
    outputs = []
    for module in (T, d2_t):
        augs = [
            module.ResizeScale(min_scale=0.1, max_scale=2.0, target_height=256, target_width=256),
            module.FixedSizeCrop(crop_size=(256, 256)),
        ]
        np.random.seed(seed)
        aug_input = module.AugInput(image.copy())
        tfms = aug_input.apply_augmentations(augs)
        outputs.append((aug_input.image, tfms.apply_box(boxes), tfms.apply_coords(polygon.copy())))
    (ours_image, ours_boxes, ours_poly), (d2_image, d2_boxes, d2_poly) = outputs
    assert ours_image.shape == d2_image.shape == (256, 256, 3)
    np.testing.assert_array_equal(ours_image, d2_image)
    np.testing.assert_allclose(ours_boxes, d2_boxes, atol=1e-4)
    np.testing.assert_allclose(ours_poly, d2_poly, atol=1e-4)
