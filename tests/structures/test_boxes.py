import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detlib.structures import Boxes, BoxMode, matched_pairwise_iou, pairwise_intersection, pairwise_ioa, pairwise_iou


def test_pairwise_iou_hand_values():
    a = Boxes([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = Boxes([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [1, 0, 3, 2]])
    # (0,0,10,10) vs (5,5,15,15): inter 25, union 175. (0,0,2,2) vs (1,0,3,2): inter 2, union 6.
    expected = torch.tensor([[25 / 175, 1.0, 0.0, 4 / 100], [0.0, 4 / 100, 0.0, 2 / 6]])
    torch.testing.assert_close(pairwise_iou(a, b), expected)
    torch.testing.assert_close(
        pairwise_intersection(a, b), torch.tensor([[25.0, 100.0, 0.0, 4.0], [0.0, 4.0, 0.0, 2.0]])
    )
    # ioa divides by the area of the second set's box.
    torch.testing.assert_close(pairwise_ioa(a, b)[1, 3], torch.tensor(2 / 4))
    torch.testing.assert_close(pairwise_ioa(a, b)[0, 1], torch.tensor(1.0))


def test_pairwise_iou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 50
    wh = torch.rand(40, 2, generator=g) * 30 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    a, b = Boxes(boxes[:25]), Boxes(boxes[25:])
    torch.testing.assert_close(pairwise_iou(a, b), box_iou(a.tensor, b.tensor))
    torch.testing.assert_close(matched_pairwise_iou(a[:15], b), box_iou(a.tensor[:15], b.tensor).diagonal())


def test_pairwise_iou_degenerate_boxes_give_zero_not_nan():
    empty = Boxes([[3, 3, 3, 3]])
    iou = pairwise_iou(empty, Boxes([[3, 3, 3, 3], [0, 0, 5, 5]]))
    assert torch.equal(iou, torch.zeros(1, 2))
    assert pairwise_iou(Boxes([]), Boxes([[0, 0, 1, 1]])).shape == (0, 1)


def test_boxes_construction_and_validation():
    assert Boxes([]).tensor.shape == (0, 4)
    assert Boxes(np.zeros((3, 4))).tensor.dtype == torch.float32
    with pytest.raises(ValueError, match="Nx4"):
        Boxes(torch.zeros(3, 5))


def test_area_centers_nonempty():
    boxes = Boxes([[0, 0, 4, 2], [1, 1, 1, 5], [2, 2, 3.5, 2.5]])
    torch.testing.assert_close(boxes.area(), torch.tensor([8.0, 0.0, 0.75]))
    torch.testing.assert_close(boxes.get_centers(), torch.tensor([[2.0, 1.0], [1.0, 3.0], [2.75, 2.25]]))
    assert boxes.nonempty().tolist() == [True, False, True]
    assert boxes.nonempty(threshold=1.0).tolist() == [True, False, False]


def test_clip_scale_inside_box():
    boxes = Boxes([[-5, -2, 30, 8], [3, 4, 6, 12]])
    assert boxes.inside_box((10, 20)).tolist() == [False, False]
    assert boxes.inside_box((10, 20), boundary_threshold=5).tolist() == [False, True]
    boxes.clip((10, 20))  # (height, width)
    torch.testing.assert_close(boxes.tensor, torch.tensor([[0.0, 0.0, 20.0, 8.0], [3.0, 4.0, 6.0, 10.0]]))
    boxes.scale(0.5, 2.0)
    torch.testing.assert_close(boxes.tensor, torch.tensor([[0.0, 0.0, 10.0, 16.0], [1.5, 8.0, 3.0, 20.0]]))
    with pytest.raises(ValueError, match="infinite"):
        Boxes([[0, 0, float("inf"), 1]]).clip((5, 5))


def test_indexing_len_iter_cat_clone():
    boxes = Boxes(torch.arange(20, dtype=torch.float32).view(5, 4))
    assert len(boxes) == 5
    assert torch.equal(boxes[1].tensor, torch.tensor([[4.0, 5.0, 6.0, 7.0]]))
    assert torch.equal(boxes[-1].tensor, boxes.tensor[4:5])
    assert torch.equal(boxes[1:3].tensor, boxes.tensor[1:3])
    mask = torch.tensor([True, False, True, False, False])
    assert torch.equal(boxes[mask].tensor, boxes.tensor[[0, 2]])
    assert torch.equal(boxes[torch.tensor([4, 0])].tensor, boxes.tensor[[4, 0]])
    assert [b.tolist() for b in boxes][2] == [8.0, 9.0, 10.0, 11.0]
    cat = Boxes.cat([boxes[:2], Boxes([]), boxes[4]])
    assert torch.equal(cat.tensor, boxes.tensor[[0, 1, 4]])
    assert len(Boxes.cat([])) == 0
    clone = boxes.clone()
    clone.tensor[0, 0] = 100
    assert boxes.tensor[0, 0] == 0
    assert boxes.to("cpu").device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pairwise_iou_on_cuda():
    a = Boxes([[0, 0, 10, 10]]).to("cuda")
    b = Boxes([[5, 5, 15, 15]]).to("cuda")
    assert pairwise_iou(a, b).device.type == "cuda"
    torch.testing.assert_close(pairwise_iou(a, b).cpu(), torch.tensor([[25 / 175]]))


def test_box_mode_conversions_by_hand():
    xywh = [10.0, 20.0, 30.0, 40.0]
    assert BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == [10.0, 20.0, 40.0, 60.0]
    assert BoxMode.convert(tuple(xywh), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == (10.0, 20.0, 40.0, 60.0)
    # A 30x40 box rotated by 90 degrees around its center (25, 40) covers 40x30.
    rotated = BoxMode.convert([25.0, 40.0, 30.0, 40.0, 90.0], BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    np.testing.assert_allclose(rotated, [5.0, 25.0, 45.0, 55.0], atol=1e-9)
    assert BoxMode.convert([0.0, 0.0, 4.0, 2.0], BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS) == [2.0, 1.0, 4.0, 2.0, 0.0]
    with pytest.raises(NotImplementedError):
        BoxMode.convert(xywh, BoxMode.XYWH_REL, BoxMode.XYXY_ABS)
    with pytest.raises(ValueError):
        BoxMode.convert([1.0, 2.0, 3.0], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)


def test_box_mode_lists_use_float32_like_detectron2():
    x0, y0, w, h = 0.1, 0.2, 0.3, 0.7
    out = BoxMode.convert([x0, y0, w, h], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert out[2] == float(np.float32(x0) + np.float32(w))
    assert out[3] == float(np.float32(y0) + np.float32(h))
    assert BoxMode.convert([1, 2, 3, 4], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == [1, 2, 4, 6]


def test_box_mode_round_trips_keep_type():
    g = np.random.default_rng(0)
    xyxy = np.concatenate([g.uniform(0, 50, (6, 2)), g.uniform(60, 100, (6, 2))], axis=1)
    for mode in (BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS):
        there = BoxMode.convert(xyxy, BoxMode.XYXY_ABS, mode)
        back = BoxMode.convert(there, mode, BoxMode.XYXY_ABS)
        assert isinstance(back, np.ndarray)
        np.testing.assert_allclose(back, xyxy, rtol=1e-12, atol=1e-9)
    tensor = torch.from_numpy(xyxy).float()
    back = BoxMode.convert(BoxMode.convert(tensor, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS), 1, 0)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    torch.testing.assert_close(back, tensor)
    # The input is never modified.
    original = tensor.clone()
    BoxMode.convert(tensor, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert torch.equal(tensor, original)
