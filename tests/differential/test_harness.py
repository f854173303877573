"""The differential harness itself: its weights are seeded per parameter, and its comparisons fail
on differences just beyond their tolerances and pass on differences just within them."""

import numpy as np
import pytest
import torch
from harness import (
    Case,
    _unpack_masks,
    check_recorded,
    compare_detections,
    compare_losses,
    instances_to_arrays,
    match_detections,
    random_weights,
    synthetic_batch,
)

from detlib.structures import Boxes, Instances

SHAPES = {
    "backbone.bottom_up.stem.conv1.weight": (8, 3, 7, 7),
    "backbone.bottom_up.stem.conv1.norm.weight": (8,),
    "backbone.bottom_up.stem.conv1.norm.running_var": (8,),
    "roi_heads.box_predictor.cls_score.weight": (4, 16),
    "roi_heads.box_predictor.cls_score.bias": (4,),
}
CASE = Case(name="unit", config="unused.yaml")


def test_random_weights_are_seeded_per_parameter():
    first = random_weights(SHAPES, 0, CASE)
    assert all(np.array_equal(first[k], v) for k, v in random_weights(SHAPES, 0, CASE).items())
    assert not np.array_equal(
        first["roi_heads.box_predictor.cls_score.weight"],
        random_weights(SHAPES, 1, CASE)["roi_heads.box_predictor.cls_score.weight"],
    )
    # A parameter's values do not depend on which other parameters the model has.
    alone = random_weights({"roi_heads.box_predictor.cls_score.bias": (4,)}, 0, CASE)
    assert np.array_equal(
        alone["roi_heads.box_predictor.cls_score.bias"], first["roi_heads.box_predictor.cls_score.bias"]
    )


def test_random_weights_follow_the_rules():
    case = Case(name="unit", config="unused.yaml", head_std={r"cls_score\.weight$": 0.5}, bias_offset={r"bias$": 10.0})
    weights = random_weights(SHAPES, 0, case)
    assert all(v.dtype == np.float32 for v in weights.values())
    assert (
        (weights["backbone.bottom_up.stem.conv1.norm.weight"] >= 0.5)
        & (weights["backbone.bottom_up.stem.conv1.norm.weight"] <= 1.5)
    ).all()
    assert (weights["backbone.bottom_up.stem.conv1.norm.running_var"] >= 0.5).all()
    cls = weights["roi_heads.box_predictor.cls_score.weight"]
    np.testing.assert_allclose(cls.mean(axis=1), 0, atol=1e-6)
    assert 0.2 < cls.std() < 1.0
    assert (weights["roi_heads.box_predictor.cls_score.bias"] > 9).all()
    stem = weights["backbone.bottom_up.stem.conv1.weight"]
    assert stem.std() == pytest.approx(np.sqrt(1 / 147), rel=0.3)


def test_synthetic_batch_is_seeded_and_consistent():
    a, b = synthetic_batch(3, num_classes=3, num_keypoints=2), synthetic_batch(3, num_classes=3, num_keypoints=2)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert not np.array_equal(a[0].image, synthetic_batch(4, num_classes=3)[0].image)
    for item in a:
        xy = [p.reshape(-1, 2) for p in item.polygons]
        np.testing.assert_allclose(item.boxes, [[*q.min(0), *q.max(0)] for q in xy], rtol=1e-6)
        assert ((item.classes >= 0) & (item.classes < 3)).all()
        assert item.keypoints.shape == (len(item.boxes), 2, 3)


def _detections(n: int, seed: int = 0, hw=(40, 50)):
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 20, (n, 2))
    boxes = np.concatenate([low, low + rng.uniform(5, 20, (n, 2))], axis=1).astype(np.float32)
    masks = np.zeros((n, *hw), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[i, y0:y1, x0:x1] = True
    instances = Instances(
        hw,
        pred_boxes=Boxes(torch.from_numpy(boxes)),
        scores=torch.from_numpy(rng.uniform(0.05, 1, n).astype(np.float32)),
        pred_classes=torch.from_numpy(rng.integers(0, 3, n)),
        pred_masks=torch.from_numpy(masks),
        pred_keypoints=torch.from_numpy(rng.uniform(0, 30, (n, 2, 3)).astype(np.float32)),
    )
    return instances_to_arrays(instances, "img0__"), masks


def _copy(outputs):
    return {k: v.copy() for k, v in outputs.items()}


def test_masks_survive_packing():
    outputs, masks = _detections(7)
    assert np.array_equal(_unpack_masks(outputs, "img0__"), masks)


def test_matching_is_one_to_one_and_order_free():
    reference, _ = _detections(20)
    order = np.random.default_rng(1).permutation(20)
    ours = {k: (v[order] if k != "img0__image_hw" else v) for k, v in reference.items()}
    pairs = match_detections(reference, ours, "img0__")
    assert sorted(i for i, _ in pairs) == list(range(20))
    assert all(order[j] == i for i, j in pairs)
    compare_detections(reference, ours, "img0__")


@pytest.mark.parametrize("change, field, index", [("class", "classes", 0), ("score", "scores", 1), ("box", "boxes", 2)])
def test_one_changed_detection_is_unmatched(change, field, index):
    reference, _ = _detections(10)
    ours = _copy(reference)
    if change == "class":
        ours["img0__classes"][index] = (ours["img0__classes"][index] + 1) % 3
    elif change == "score":
        ours["img0__scores"][index] += 1.5e-3
    else:
        ours["img0__boxes"][index, 2] += 0.03 * (ours["img0__boxes"][index, 2] - ours["img0__boxes"][index, 0])
    assert len(match_detections(reference, ours, "img0__")) == 9
    with pytest.raises(AssertionError, match="9 matched of 10"):
        compare_detections(reference, ours, "img0__")


def test_within_tolerance_detections_match():
    reference, _ = _detections(10)
    ours = _copy(reference)
    ours["img0__scores"] += 5e-4
    ours["img0__boxes"] += 0.01
    ours["img0__keypoints"][..., :2] += 0.05
    compare_detections(reference, ours, "img0__")


def test_two_percent_of_detections_may_be_missing():
    reference, _ = _detections(100)
    keep = np.arange(1, 100)
    ours = {k: (v[keep] if k != "img0__image_hw" else v) for k, v in reference.items()}
    compare_detections(reference, ours, "img0__")
    keep = np.arange(3, 100)
    ours = {k: (v[keep] if k != "img0__image_hw" else v) for k, v in reference.items()}
    with pytest.raises(AssertionError, match="97 matched"):
        compare_detections(reference, ours, "img0__")
    # Extra detections of ours count too.
    with pytest.raises(AssertionError, match="97 matched"):
        compare_detections(ours, reference, "img0__")


def test_mask_and_keypoint_differences_fail():
    reference, masks = _detections(5, hw=(40, 50))
    for flipped, ok in ((1, True), (3, False)):  # of 2000 pixels: 99.9% agreement allows 2 flips
        changed = masks.copy()
        changed[4, :1, :flipped] = ~changed[4, :1, :flipped]
        ours = _copy(reference)
        ours.update({k: v for k, v in instances_to_arrays(_with_masks(changed), "img0__").items() if "mask" in k})
        if ok:
            compare_detections(reference, ours, "img0__")
        else:
            with pytest.raises(AssertionError, match="mask agrees"):
                compare_detections(reference, ours, "img0__")
    ours = _copy(reference)
    ours["img0__keypoints"][0, 1, 0] += 0.11
    with pytest.raises(AssertionError, match="keypoints differ"):
        compare_detections(reference, ours, "img0__")


def _with_masks(masks):
    n, h, w = masks.shape
    return Instances(
        (h, w),
        pred_boxes=Boxes(torch.zeros(n, 4)),
        scores=torch.zeros(n),
        pred_classes=torch.zeros(n, dtype=torch.int64),
        pred_masks=torch.from_numpy(masks),
    )


def test_losses_compare_relatively_and_by_name():
    reference = {"loss__loss_cls": np.asarray(0.5), "loss__loss_rpn_loc": np.asarray(1e-5)}
    compare_losses(reference, {"loss__loss_cls": np.asarray(0.5004), "loss__loss_rpn_loc": np.asarray(1.0009e-5)})
    with pytest.raises(AssertionError, match="loss_rpn_loc"):
        compare_losses(reference, {"loss__loss_cls": np.asarray(0.5), "loss__loss_rpn_loc": np.asarray(1.002e-5)})
    with pytest.raises(AssertionError):
        compare_losses(reference, {"loss__loss_cls": np.asarray(0.5)})


def test_recorded_check_refuses_changed_weight_rules(tmp_path):
    changed = Case(name="mask_rcnn", config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", head_std={})
    with pytest.raises(AssertionError, match="weights differ"):
        check_recorded(changed, 0, tmp_path)
