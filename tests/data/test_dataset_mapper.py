import numpy as np
import pytest
import torch
from PIL import Image

from detlib.config import get_cfg
from detlib.data import BadSampleError, DatasetMapper
from detlib.data import transforms as T
from detlib.data.datasets import load_coco_json
from detlib.structures import BitMasks, PolygonMasks


def _mapper(is_train=True, mask_format="polygon", augs=None):
    return DatasetMapper(
        is_train,
        augmentations=augs if augs is not None else [T.ResizeShortestEdge(320, 512, "choice")],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format=mask_format,
    )


def test_training_inputs_match_detectron2_parity(parity_dir):
    expected = np.load(parity_dir / "train_inputs.npz")
    records = load_coco_json(str(parity_dir / "annotations.json"), str(parity_dir / "images"))
    mapper = _mapper()
    for record, stem in zip(records, expected["image_stems"]):
        out = mapper(record)
        np.testing.assert_array_equal(out["image"].numpy(), expected[f"{stem}__image_chw_bgr_uint8"])
        inst = out["instances"]
        np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), expected[f"{stem}__gt_boxes"], rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(inst.gt_classes.numpy(), expected[f"{stem}__gt_classes"])
        assert isinstance(inst.gt_masks, PolygonMasks)
        for i, polys in enumerate(inst.gt_masks.polygons):
            for j, poly in enumerate(polys):
                np.testing.assert_allclose(poly, expected[f"{stem}__gt_polygon_{i}_{j}"], rtol=1e-12)
        assert (out["height"], out["width"]) == (record["height"], record["width"])


def _reference_masks(tiny_coco, image_id, new_hw, flip):
    """Reference: each object's full-resolution mask, resized with PIL nearest and flipped."""
    from pycocotools.coco import COCO

    api = COCO(str(tiny_coco / "annotations.json"))
    masks = []
    for ann in api.loadAnns(api.getAnnIds(imgIds=[image_id], iscrowd=False)):
        m = Image.fromarray(api.annToMask(ann)).resize(new_hw[::-1], Image.NEAREST)
        m = np.asarray(m).astype(bool)
        masks.append(m[:, ::-1] if flip else m)
    return masks


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_mixed_polygon_and_rle_dataset_trains_with_either_mask_format(tiny_coco, mask_format):
    records = {r["image_id"]: r for r in load_coco_json(str(tiny_coco / "annotations.json"), str(tiny_coco))}
    mapper = _mapper(mask_format=mask_format, augs=[T.ResizeShortestEdge(60, 1000, "choice"), T.RandomFlip(1.0)])

    ring = mapper(records[11])["instances"]  # RLE ring with a hole: never turned into polygons
    assert isinstance(ring.gt_masks, BitMasks)
    assert ring.gt_masks.tensor.shape == (1, 100, 60)
    (reference,) = _reference_masks(tiny_coco, 11, (100, 60), flip=True)
    np.testing.assert_array_equal(ring.gt_masks.tensor[0].numpy(), reference)
    assert not ring.gt_masks.tensor[0, 50, 30]  # the hole survives
    # ring box x in [5, 25) of 30 -> scaled by 2 and flipped: [10, 50)
    np.testing.assert_allclose(ring.gt_boxes.tensor.numpy(), [[10.0, 20.0, 50.0, 80.0]])

    tri = mapper(records[10])["instances"]  # polygon triangle; the crowd box is dropped
    assert len(tri) == 1 and tri.gt_classes.tolist() == [1]
    expected_type = PolygonMasks if mask_format == "polygon" else BitMasks
    assert isinstance(tri.gt_masks, expected_type)
    if mask_format == "polygon":
        # polygon (10,5) (40,5) (10,30) scaled by 1.5, flipped in a 90 px wide image
        np.testing.assert_allclose(tri.gt_masks.polygons[0][0], [75.0, 7.5, 30.0, 7.5, 75.0, 45.0])
    else:
        (reference,) = _reference_masks(tiny_coco, 10, (60, 90), flip=True)
        agreement = (tri.gt_masks.tensor[0].numpy() == reference).mean()
        assert agreement > 0.97  # polygon rasterized at the new size vs. upscaled raster: edges differ


def test_inference_mapping_drops_annotations(tiny_coco):
    records = load_coco_json(str(tiny_coco / "annotations.json"), str(tiny_coco))
    out = _mapper(is_train=False)(records[0])
    assert "annotations" not in out and "instances" not in out
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 320, 480)
    assert records[0]["annotations"], "the mapper must not modify the dataset's records"


def test_from_config_reads_input_keys():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (100, 200)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.MAX_SIZE_TRAIN = 300
    cfg.INPUT.RANDOM_FLIP = "vertical"
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    mapper = DatasetMapper(cfg, is_train=True)
    resize, flip = mapper.augmentations.augs
    assert (resize.short_edge_length, resize.max_size, resize.sample_style) == ((100, 200), 300, "range")
    assert flip.vertical and not flip.horizontal
    assert mapper.image_format == "RGB" and mapper.use_instance_mask and mapper.instance_mask_format == "bitmask"
    test_mapper = DatasetMapper(cfg, is_train=False)
    (resize,) = test_mapper.augmentations.augs
    assert resize.short_edge_length == (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)


def test_crop_recomputes_boxes_from_masks(tiny_coco):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [40, 60]  # the whole image: the crop must then change nothing
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)
    cfg.INPUT.RANDOM_FLIP = "none"
    mapper = DatasetMapper(cfg, is_train=True)
    assert mapper.recompute_boxes
    record = load_coco_json(str(tiny_coco / "annotations.json"), str(tiny_coco))[0]
    record["annotations"][0]["bbox"] = [0.0, 0.0, 60.0, 40.0]  # loose: the mask decides
    inst = mapper(record)["instances"]
    # the extent of the triangle (10,5) (40,5) (10,30)
    np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), [[10.0, 5.0, 40.0, 30.0]])


def _record(tiny_coco, **changes):
    record = load_coco_json(str(tiny_coco / "annotations.json"), str(tiny_coco))[0]
    record.update(changes)
    return record


def test_missing_image_file_names_file_id_and_field(tiny_coco):
    record = _record(tiny_coco, file_name=str(tiny_coco / "nope.png"))
    with pytest.raises(BadSampleError, match=r"nope\.png, image id 10: field 'file_name' names a missing file"):
        _mapper()(record)


def test_undecodable_image_names_file_id_and_field(tiny_coco):
    (tiny_coco / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    record = _record(tiny_coco, file_name=str(tiny_coco / "broken.png"))
    with pytest.raises(BadSampleError, match=r"broken\.png, image id 10: field 'file_name' is not a decodable image"):
        _mapper()(record)


def test_image_size_mismatch_names_file_id_and_field(tiny_coco):
    record = _record(tiny_coco, height=41)
    with pytest.raises(BadSampleError, match=r"10\.png, image id 10: field 'height' is 41 but the image file is 40x60"):
        _mapper()(record)


def test_keypoints_are_resized_flipped_and_swapped(tiny_coco):
    records = {r["image_id"]: r for r in load_coco_json(str(tiny_coco / "annotations.json"), str(tiny_coco))}
    record = records[11]  # 50 x 30 (h x w)
    record["annotations"][0]["keypoints"] = [5.5, 10.5, 2, 20.5, 30.5, 1, 0.0, 0.0, 0]  # (left, right, middle)
    mapper = DatasetMapper(
        True,
        augmentations=[T.ResizeShortestEdge(60, 1000, "choice"), T.RandomFlip(1.0)],
        image_format="BGR",
        use_keypoint=True,
        keypoint_hflip_indices=[1, 0, 2],
    )
    inst = mapper(record)["instances"]
    # Scaled by 2 into a 60 px wide image, mirrored (x -> 60 - x), left and right swapped.
    assert inst.gt_keypoints.tensor.tolist() == [[[60 - 41.0, 61.0, 1], [60 - 11.0, 21.0, 2], [0, 0, 0]]]
    without = DatasetMapper(True, augmentations=[], image_format="BGR")(record)["instances"]
    assert not without.has("gt_keypoints")


def test_from_config_reads_keypoint_flip_indices_from_the_training_sets():
    cfg = get_cfg()
    cfg.MODEL.KEYPOINT_ON = True
    cfg.DATASETS.TRAIN = ("keypoints_coco_2017_train",)
    mapper = DatasetMapper(cfg, is_train=True)
    assert mapper.use_keypoint
    # nose stays; left_eye (1) <-> right_eye (2), ..., left_ankle (15) <-> right_ankle (16)
    assert mapper.keypoint_hflip_indices == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def test_keypoint_counts_that_disagree_are_rejected_naming_file_image_and_field(tiny_coco):
    records = {r["image_id"]: r for r in load_coco_json(str(tiny_coco / "annotations.json"), str(tiny_coco))}
    record = records[11]
    record["annotations"][0]["keypoints"] = [5.5, 10.5, 2, 20.5, 30.5, 1]  # 2 keypoints, the metadata names 3
    mapper = DatasetMapper(
        True, augmentations=[], image_format="BGR", use_keypoint=True, keypoint_hflip_indices=[1, 0, 2]
    )
    with pytest.raises(BadSampleError) as e:
        mapper(record)
    msg = str(e.value)
    assert "11.png" in msg and "image id 11" in msg and "field 'keypoints'" in msg and "[2]" in msg
