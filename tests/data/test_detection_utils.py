import numpy as np
import pytest
import torch
from PIL import Image

from detlib.data import BadSampleError, MetadataCatalog
from detlib.data import detection_utils as utils
from detlib.structures import BitMasks, Boxes, BoxMode, Instances


def _gradient_rgb(h=6, w=10):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w)[None] * 20  # red grows left to right
    img[..., 1] = np.arange(h)[:, None] * 30  # green grows top to bottom
    img[..., 2] = 7
    return img


def test_read_image_formats(tmp_path):
    rgb = _gradient_rgb()
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(utils.read_image(str(path), "RGB"), rgb)
    np.testing.assert_array_equal(utils.read_image(str(path), "BGR"), rgb[:, :, ::-1])
    gray = utils.read_image(str(path), "L")
    assert gray.shape == (6, 10, 1)
    np.testing.assert_array_equal(gray[:, :, 0], np.asarray(Image.fromarray(rgb).convert("L")))


def test_read_image_applies_exif_orientation(tmp_path):
    rgb = _gradient_rgb()
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).save(path, exif=exif, quality=100, subsampling=0)
    out = utils.read_image(str(path), "RGB")
    assert out.shape == (10, 6, 3)  # upright: the stored 6x10 image turned clockwise
    expected = np.rot90(rgb, k=-1)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 8  # JPEG rounding


def test_read_image_grayscale_and_rgba_become_three_channels(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = utils.read_image(str(tmp_path / "g.png"), "BGR")
    assert out.shape == (6, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)

    rgba = np.concatenate([_gradient_rgb(), np.full((6, 10, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = utils.read_image(str(tmp_path / "a.png"), "RGB")
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        utils.read_image(str(tmp_path / "missing.png"), "RGB")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(OSError):
        utils.read_image(str(tmp_path / "junk.jpg"), "RGB")


def test_check_image_size_fills_missing_and_rejects_mismatch():
    image = np.zeros((5, 7, 3), np.uint8)
    record = {"file_name": "x.png", "image_id": 4}
    utils.check_image_size(record, image)
    assert (record["height"], record["width"]) == (5, 7)
    with pytest.raises(BadSampleError, match=r"x\.png, image id 4: field 'width' is 8"):
        utils.check_image_size({"file_name": "x.png", "image_id": 4, "height": 5, "width": 8}, image)


def test_transform_instance_annotations_clips_box_to_image():
    from detlib.data import transforms as T

    anno = {"bbox": [-4.0, 2.0, 30.0, 6.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    out = utils.transform_instance_annotations(anno, [T.ResizeTransform(10, 20, 20, 40)], (20, 40))
    np.testing.assert_allclose(out["bbox"], [0.0, 4.0, 40.0, 16.0])
    assert out["bbox_mode"] == BoxMode.XYXY_ABS


def test_annotations_to_instances_and_filter_empty():
    annos = [
        {
            "bbox": [1.0, 1.0, 5.0, 5.0],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": 2,
            "segmentation": [np.array([1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0])],
        },
        {
            "bbox": [3.0, 3.0, 3.0, 9.0],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": 1,  # zero width
            "segmentation": np.zeros((8, 8), np.uint8),
        },
    ]
    inst = utils.annotations_to_instances(annos, (8, 8), mask_format="polygon")
    assert isinstance(inst.gt_masks, BitMasks)  # one raster mask: the image gets bitmasks
    assert inst.gt_masks.tensor[0, 1:5, 1:5].all() and inst.gt_masks.tensor[0].sum() == 16
    np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), [[1, 1, 5, 5], [3, 3, 3, 8]])  # clipped to 8
    assert inst.gt_classes.tolist() == [2, 1]
    kept = utils.filter_empty_instances(inst)
    assert len(kept) == 1 and kept.gt_classes.tolist() == [2]


def test_filter_empty_instances_by_mask():
    inst = Instances((4, 4))
    inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 3.0, 3.0]]))
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[1, 1, 1] = True
    inst.gt_masks = BitMasks(masks)
    assert utils.filter_empty_instances(inst).gt_boxes.tensor.tolist() == [[0.0, 0.0, 3.0, 3.0]]
    assert len(utils.filter_empty_instances(inst, by_mask=False)) == 2


def test_transform_keypoint_annotations_resizes_flips_and_swaps_by_hand():
    from detlib.data import transforms as T

    # (left, right, middle) keypoints in a 20 x 10 (w x h) image, scaled 2x, then flipped in 40 px.
    keypoints = [4.0, 2.0, 2, 15.0, 3.0, 1, 30.0, 5.0, 2]  # the middle one is outside the image (x 30 > 20)
    tfms = [T.ResizeTransform(10, 20, 20, 40), T.HFlipTransform(40)]
    out = utils.transform_keypoint_annotations(keypoints, tfms, (20, 40), keypoint_hflip_indices=[1, 0, 2])
    # left <- flipped right (40 - 30, 6); right <- flipped left (40 - 8, 4); middle unlabeled.
    np.testing.assert_allclose(out, [[10.0, 6.0, 1], [32.0, 4.0, 2], [0, 0, 0]])
    # Two flips cancel: no swap, and no flip indices needed.
    twice = utils.transform_keypoint_annotations(keypoints[:6], [T.HFlipTransform(20), T.HFlipTransform(20)], (10, 20))
    np.testing.assert_allclose(twice, [[4.0, 2.0, 2], [15.0, 3.0, 1]])
    with pytest.raises(ValueError, match="keypoint_hflip_indices"):
        utils.transform_keypoint_annotations(keypoints, [T.HFlipTransform(20)], (10, 20))
    with pytest.raises(ValueError, match="3 keypoints, but the flip indices name 2"):
        utils.transform_keypoint_annotations(keypoints, [T.HFlipTransform(20)], (10, 20), [1, 0])


def test_annotations_to_instances_keeps_keypoints():
    annos = [
        {"bbox": [1.0, 1.0, 5.0, 5.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
         "keypoints": np.array([[2.0, 3.0, 2], [0, 0, 0]])},
    ]  # fmt: skip
    inst = utils.annotations_to_instances(annos, (8, 8))
    assert inst.gt_keypoints.tensor.tolist() == [[[2.0, 3.0, 2], [0, 0, 0]]]


def test_keypoint_hflip_indices_from_metadata():
    from detlib.data import MetadataCatalog

    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
    flips = [("left_eye", "right_eye"), ("left_ear", "right_ear")]
    MetadataCatalog.get("kp_meta_a").set(keypoint_names=names, keypoint_flip_map=flips)
    MetadataCatalog.get("kp_meta_b").set(keypoint_names=names, keypoint_flip_map=[list(p) for p in flips])
    MetadataCatalog.get("kp_meta_c").set(keypoint_names=names, keypoint_flip_map=flips[:1])
    try:
        assert utils.create_keypoint_hflip_indices(["kp_meta_a", "kp_meta_b"]) == [0, 2, 1, 4, 3]
        with pytest.raises(ValueError, match="different 'keypoint_flip_map'"):
            utils.create_keypoint_hflip_indices(["kp_meta_a", "kp_meta_c"])
        with pytest.raises(ValueError, match="has no 'keypoint_names'"):
            utils.create_keypoint_hflip_indices("kp_meta_none")
    finally:
        for name in ("kp_meta_a", "kp_meta_b", "kp_meta_c", "kp_meta_none"):
            MetadataCatalog.remove(name)


def test_test_loader_predictor_and_export_resize_alike(tmp_path):
    """One test-time resize: the mapper's test augmentation, export's sample images and DefaultPredictor's
    input all come from `build_test_resize`, so a model sees the same pixels in all three."""
    import cv2

    from detlib.config import get_cfg
    from detlib.data.detection_utils import build_augmentation, build_test_resize
    from detlib.export.inputs import load_test_image

    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 48, 80
    image = np.random.RandomState(0).randint(0, 255, (30, 70, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image)
    (test_aug,) = build_augmentation(cfg, is_train=False)
    resized = test_aug.get_transform(image).apply_image(image)
    assert resized.shape[:2] == (34, 80)  # short side 48 would make the long one 112 > 80
    np.testing.assert_array_equal(build_test_resize(cfg).get_transform(image).apply_image(image), resized)
    np.testing.assert_array_equal(load_test_image(cfg, str(tmp_path / "x.png")).permute(1, 2, 0).numpy(), resized)


def test_fed_loss_weights_are_image_counts_to_a_power_in_class_id_order():
    get_fed_loss_cls_weights = utils.get_fed_loss_cls_weights
    MetadataCatalog.get("fed_a").set(class_image_count=[{"id": 2, "image_count": 9}, {"id": 1, "image_count": 4}])
    MetadataCatalog.get("fed_b").set(class_image_count=[{"id": 1, "image_count": 4}])
    assert get_fed_loss_cls_weights("fed_a", 0.5).tolist() == [2.0, 3.0]
    assert get_fed_loss_cls_weights(["fed_a"]).tolist() == [4.0, 9.0]
    with pytest.raises(ValueError, match="'fed_a' and 'fed_b' have different 'class_image_count'"):
        get_fed_loss_cls_weights(["fed_a", "fed_b"])
    with pytest.raises(ValueError, match="'fed_none' has no 'class_image_count'"):
        get_fed_loss_cls_weights("fed_none")
    weights = get_fed_loss_cls_weights("lvis_v1_train", 0.5)  # the builtin metadata, no files needed
    assert weights.shape == (1203,) and weights[0] == pytest.approx(64**0.5)
