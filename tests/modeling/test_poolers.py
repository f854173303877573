import math

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from detlib.modeling.poolers import ROIPooler, assign_boxes_to_levels, convert_boxes_to_pooler_format
from detlib.structures import Boxes


def _square(side, x0=0.0, y0=0.0):
    return [x0, y0, x0 + side, y0 + side]


def test_assign_boxes_to_levels_follows_fpn_rule():
    # level = floor(4 + log2(side / 224)), clamped to [2, 5], returned relative to level 2.
    sides = [224, 223, 112, 111, 448, 447, 56, 10, 2000]
    expected = [4, 3, 3, 2, 5, 4, 2, 2, 5]
    boxes = [Boxes(torch.tensor([_square(s) for s in sides[:4]])), Boxes(torch.tensor([_square(s) for s in sides[4:]]))]
    levels = assign_boxes_to_levels(boxes, 2, 5, 224, 4)
    assert levels.dtype == torch.int64
    assert levels.tolist() == [e - 2 for e in expected]


def test_assign_boxes_to_levels_uses_area_for_rectangles():
    # sqrt(448 * 112) = 224: a canonical-size box however elongated.
    levels = assign_boxes_to_levels([Boxes(torch.tensor([[0.0, 0.0, 448.0, 112.0]]))], 2, 5, 224, 4)
    assert levels.tolist() == [2]


def test_convert_boxes_to_pooler_format():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    b = torch.tensor([[9.0, 10.0, 11.0, 12.0]])
    rois = convert_boxes_to_pooler_format([Boxes(a), Boxes(torch.zeros(0, 4)), Boxes(b)])
    expected = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 6.0, 7.0, 8.0], [2.0, 9.0, 10.0, 11.0, 12.0]])
    assert torch.equal(rois, expected)


@pytest.mark.parametrize("pooler_type,aligned,sampling_ratio", [("ROIAlignV2", True, 0), ("ROIAlign", False, 2)])
def test_pooler_pools_each_box_from_its_level(pooler_type, aligned, sampling_ratio):
    torch.manual_seed(0)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    image_size = 512
    features = [torch.randn(2, 3, int(image_size * s), int(image_size * s)) for s in scales]
    boxes = [
        Boxes(torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 300.0, 250.0], [100.0, 50.0, 230.0, 180.0]])),
        Boxes(torch.tensor([[5.5, 7.25, 500.0, 480.0], [60.0, 60.0, 61.0, 62.0]])),
    ]
    pooler = ROIPooler(7, scales, sampling_ratio, pooler_type)
    out = pooler(features, boxes)
    assert out.shape == (5, 3, 7, 7)

    row = 0
    for image, per_image in enumerate(boxes):
        for box in per_image.tensor:
            side = math.sqrt(float((box[2] - box[0]) * (box[3] - box[1])))
            level = min(max(math.floor(4 + math.log2(side / 224)), 2), 5) - 2
            ref = tv_roi_align(
                features[level][image : image + 1], [box[None]], 7, scales[level], sampling_ratio, aligned
            )
            torch.testing.assert_close(out[row], ref[0], rtol=1e-5, atol=1e-6)
            row += 1


def test_pooler_single_level_and_images_without_boxes():
    feature = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    pooler = ROIPooler((2, 3), [1.0], 1, "ROIAlignV2")
    boxes = [Boxes(torch.zeros(0, 4)), Boxes(torch.tensor([[0.0, 0.0, 6.0, 4.0]]))]
    out = pooler([feature], boxes)
    ref = tv_roi_align(feature[1:], [boxes[1].tensor], (2, 3), 1.0, 1, True)
    assert out.shape == (1, 1, 2, 3)
    torch.testing.assert_close(out, ref)

    empty = pooler([feature], [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))])
    assert empty.shape == (0, 1, 2, 3)


def test_pooler_gradients_reach_every_level():
    scales = [1 / 4, 1 / 8]
    features = [torch.randn(1, 2, 32, 32, requires_grad=True), torch.randn(1, 2, 16, 16, requires_grad=True)]
    boxes = [Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 120.0, 120.0]]))]
    ROIPooler(3, scales, 2, "ROIAlignV2", canonical_box_size=64, canonical_level=3)(features, boxes).sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in features)


def test_pooler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pooler_type"):
        ROIPooler(7, [1 / 4], 0, "ROIPool")
    with pytest.raises(ValueError, match="power of 1/2"):
        ROIPooler(7, [1 / 3], 0, "ROIAlignV2")
    with pytest.raises(ValueError, match="consecutive"):
        ROIPooler(7, [1 / 4, 1 / 16], 0, "ROIAlignV2")
    pooler = ROIPooler(7, [1 / 4, 1 / 8], 0, "ROIAlignV2")
    with pytest.raises(ValueError, match="levels"):
        pooler([torch.zeros(1, 1, 8, 8)], [Boxes(torch.zeros(0, 4))])
