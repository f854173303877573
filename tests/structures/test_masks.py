import numpy as np
import pytest
import torch

from detlib.structures import BitMasks, Boxes, PolygonMasks, polygons_to_bitmask

SQUARE = [2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]  # pixels 2..5 in x and y (pixel centers inside)
TRIANGLE = [0.0, 0.0, 4.0, 0.0, 0.0, 4.0]


def _roi_align_available() -> bool:
    try:
        from detlib.layers.roi_align import ROIAlign  # noqa: F401
    except ImportError:
        return False
    return True


needs_roi_align = pytest.mark.skipif(not _roi_align_available(), reason="detlib.layers.roi_align not built")


def _square_mask(h, w, y0, y1, x0, x1) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_polygons_to_bitmask_square_and_union():
    expected = _square_mask(8, 9, 2, 6, 2, 6).numpy()
    np.testing.assert_array_equal(polygons_to_bitmask([np.array(SQUARE)], 8, 9), expected)
    second = np.array(SQUARE) + 4  # pixels 6..9, overlapping nothing
    union = polygons_to_bitmask([np.array(SQUARE), second], 12, 12)
    np.testing.assert_array_equal(
        union, _square_mask(12, 12, 2, 6, 2, 6).numpy() | _square_mask(12, 12, 6, 10, 6, 10).numpy()
    )
    assert not polygons_to_bitmask([], 3, 4).any()


def test_polygon_crop_of_its_own_square_is_all_ones():
    masks = PolygonMasks([[SQUARE]])
    out = masks.crop_and_resize(torch.tensor([[2.0, 2.0, 6.0, 6.0]]), 4)
    assert out.dtype == torch.bool and out.shape == (1, 4, 4)
    assert out.all()
    # Upsampled 7x, still all ones.
    assert masks.crop_and_resize(torch.tensor([[2.0, 2.0, 6.0, 6.0]]), 28).all()


def test_polygon_crop_hand_cases():
    masks = PolygonMasks([[SQUARE]] * 4)
    boxes = torch.tensor(
        [
            [0.0, 0.0, 8.0, 8.0],  # scale 1: the square sits at 2..5
            [4.0, 2.0, 8.0, 6.0],  # the box covers the square's right half, in the left half of the box
            [2.0, 2.0, 6.0, 10.0],  # y scaled by 0.5: the square fills the top half
            [3.0, 3.0, 3.0, 7.0],  # zero width: x is scaled by 4 / 0.1, so the square spans all columns
        ]
    )
    out = masks.crop_and_resize(boxes, 8)[:1]
    assert torch.equal(out[0], _square_mask(8, 8, 2, 6, 2, 6))
    out = masks.crop_and_resize(boxes, 4)
    assert torch.equal(out[1], _square_mask(4, 4, 0, 4, 0, 2))
    assert torch.equal(out[2], _square_mask(4, 4, 0, 2, 0, 4))
    # y: (2 - 3, 6 - 3) = (-1, 3) at scale 1, so rows 0..2.
    assert torch.equal(out[3], _square_mask(4, 4, 0, 3, 0, 4))


def test_polygon_crop_accepts_boxes_and_empty_input():
    masks = PolygonMasks([[SQUARE]])
    assert masks.crop_and_resize(Boxes([[2, 2, 6, 6]]), 2).all()
    empty = PolygonMasks([]).crop_and_resize(torch.zeros(0, 4), 5)
    assert empty.shape == (0, 5, 5) and empty.dtype == torch.bool
    with pytest.raises(ValueError, match="2 boxes for 1"):
        masks.crop_and_resize(torch.zeros(2, 4), 4)


def test_polygon_crop_does_not_change_the_polygons():
    masks = PolygonMasks([[SQUARE]])
    masks.crop_and_resize(torch.tensor([[1.0, 1.0, 3.0, 5.0]]), 7)
    np.testing.assert_array_equal(masks.polygons[0][0], SQUARE)


def test_polygon_masks_construction_keeps_float64_copies():
    source = np.array(SQUARE, dtype=np.float32)
    masks = PolygonMasks([[source, torch.tensor(TRIANGLE)], [SQUARE]])
    for instance in masks.polygons:
        for poly in instance:
            assert isinstance(poly, np.ndarray) and poly.dtype == np.float64 and poly.ndim == 1
    masks.scale(2.0, 3.0)
    np.testing.assert_array_equal(masks.polygons[0][0], [4, 6, 12, 6, 12, 18, 4, 18])
    np.testing.assert_array_equal(source, SQUARE)  # the caller's array is untouched
    with pytest.raises(ValueError, match="polygon 1 of instance 0 has 4 coordinates"):
        PolygonMasks([[SQUARE, [0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="even number"):
        PolygonMasks([[SQUARE[:7]]])
    with pytest.raises(TypeError):
        PolygonMasks([SQUARE])


def test_polygon_boxes_area_nonempty():
    masks = PolygonMasks([[SQUARE], [TRIANGLE, list(np.array(SQUARE) + 10)], []])
    torch.testing.assert_close(
        masks.get_bounding_boxes().tensor, torch.tensor([[2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 16.0, 16.0], [0.0] * 4])
    )
    torch.testing.assert_close(masks.area(), torch.tensor([16.0, 8.0 + 16.0, 0.0], dtype=torch.float64))
    assert masks.nonempty().tolist() == [True, True, False]


def test_polygon_indexing_and_cat():
    masks = PolygonMasks([[SQUARE], [TRIANGLE], [SQUARE, TRIANGLE]])
    assert len(masks[1]) == 1 and masks[1].polygons[0][0][2] == 4.0
    assert [len(p) for p in masks[1:]] == [1, 2]
    assert [len(p) for p in masks[torch.tensor([False, True, True])]] == [1, 2]
    assert [len(p) for p in masks[torch.tensor([2, 0])]] == [2, 1]
    assert [len(p) for p in masks[[0, 2]]] == [1, 2]
    cat = PolygonMasks.cat([masks, masks[2]])
    assert len(cat) == 4 and len(cat.polygons[3]) == 2
    assert masks.to("cpu") is masks


def test_bitmasks_basics():
    tensor = torch.stack(
        [_square_mask(6, 7, 1, 4, 2, 5), torch.zeros(6, 7, dtype=torch.bool), _square_mask(6, 7, 5, 6, 6, 7)]
    )
    masks = BitMasks(tensor.numpy().astype(np.uint8))
    assert masks.tensor.dtype == torch.bool and masks.image_size == (6, 7) and len(masks) == 3
    torch.testing.assert_close(
        masks.get_bounding_boxes().tensor, torch.tensor([[2.0, 1.0, 5.0, 4.0], [0.0] * 4, [6.0, 5.0, 7.0, 6.0]])
    )
    assert masks.nonempty().tolist() == [True, False, True]
    assert masks.area().tolist() == [9, 0, 1]
    assert torch.equal(masks[0].tensor, tensor[:1])
    assert torch.equal(masks[masks.nonempty()].tensor, tensor[[0, 2]])
    assert len(BitMasks.cat([masks, masks[1:]])) == 5
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        BitMasks(torch.zeros(3, 3))


def test_bitmasks_from_polygon_masks():
    polys = PolygonMasks([[SQUARE], [TRIANGLE]])
    masks = BitMasks.from_polygon_masks(polys, 8, 9)
    assert masks.tensor.shape == (2, 8, 9)
    assert torch.equal(masks.tensor[0], _square_mask(8, 9, 2, 6, 2, 6))
    assert torch.equal(masks.tensor[1], torch.from_numpy(polygons_to_bitmask([np.array(TRIANGLE)], 8, 9)))
    assert BitMasks.from_polygon_masks([], 4, 4).tensor.shape == (0, 4, 4)


@needs_roi_align
def test_bitmask_crop_of_aligned_square_is_exact():
    masks = BitMasks(_square_mask(10, 10, 2, 6, 2, 6)[None])
    out = masks.crop_and_resize(torch.tensor([[2.0, 2.0, 6.0, 6.0]]), 4)
    assert out.dtype == torch.bool and out.all()
    out = masks.crop_and_resize(torch.tensor([[4.0, 2.0, 8.0, 6.0]]), 4)
    assert torch.equal(out[0], _square_mask(4, 4, 0, 4, 0, 2))


@needs_roi_align
def test_bitmask_crop_matches_torchvision_roi_align():
    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(0)
    tensor = torch.rand(3, 20, 24, generator=g) > 0.5
    boxes = torch.tensor([[1.3, 2.7, 15.2, 18.0], [0.0, 0.0, 24.0, 20.0], [5.5, 5.5, 9.0, 7.25]])
    rois = torch.cat([torch.arange(3, dtype=torch.float32)[:, None], boxes], dim=1)
    expected = roi_align(tensor.float()[:, None], rois, (7, 7), 1.0, 0, aligned=True)[:, 0] >= 0.5
    assert torch.equal(BitMasks(tensor).crop_and_resize(boxes, 7), expected)


@needs_roi_align
def test_polygon_and_bitmask_crops_agree():
    # A smooth polygon (a 40-gon "circle") in a large image: both representations crop to nearly the
    # same target; they may differ only along the boundary.
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    circle = np.stack([30 + 20 * np.cos(angles), 25 + 15 * np.sin(angles)], axis=1).reshape(-1)
    polys = PolygonMasks([[circle], [circle]])
    bits = BitMasks.from_polygon_masks(polys, 50, 60)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [5.0, 15.0, 35.0, 45.0]])
    from_polys = polys.crop_and_resize(boxes, 28)
    from_bits = bits.crop_and_resize(boxes, 28)
    agreement = (from_polys == from_bits).float().mean()
    assert agreement > 0.97
    assert from_polys.sum() > 200  # not trivially empty
