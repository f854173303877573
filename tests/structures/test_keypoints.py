import math

import pytest
import torch
import torch.nn.functional as F

from detlib.structures import Instances, Keypoints, heatmaps_to_keypoints, keypoints_to_heatmap


def test_construction_indexing_and_cat():
    kpts = Keypoints([[[1, 2, 2], [3, 4, 1]], [[5, 6, 0], [7, 8, 2]]])
    assert kpts.tensor.dtype == torch.float32 and len(kpts) == 2
    assert kpts[1].tensor.tolist() == [[[5, 6, 0], [7, 8, 2]]]
    assert kpts[torch.tensor([False, True])].tensor.shape == (1, 2, 3)
    assert Keypoints.cat([kpts, kpts[0]]).tensor.shape == (3, 2, 3)
    assert len(Keypoints(torch.zeros(0))) == 0
    with pytest.raises(ValueError, match=r"\(N, K, 3\)"):
        Keypoints(torch.zeros(2, 3))


def test_keypoints_index_and_concatenate_with_instances():
    inst = Instances((10, 10), gt_keypoints=Keypoints(torch.arange(12.0).reshape(2, 2, 3)))
    both = Instances.cat([inst, inst[1]])
    assert both.gt_keypoints.tensor[2].tolist() == [[6, 7, 8], [9, 10, 11]]


def test_hflip_mirrors_x_and_swaps_left_and_right():
    # Keypoints (left eye, right eye, nose) in an image 10 px wide; the left eye is unlabeled.
    kpts = Keypoints([[[0, 0, 0], [7.5, 2, 2], [4, 5, 1]]])
    flipped = kpts.hflip(10, [1, 0, 2])
    # The mirrored right eye (x 10 - 7.5) is the new left eye; the new right eye is unlabeled.
    assert flipped.tensor.tolist() == [[[2.5, 2, 2], [0, 0, 0], [6, 5, 1]]]
    with pytest.raises(ValueError, match="permutation"):
        kpts.hflip(10, [0, 0, 2])


def test_to_heatmap_by_hand():
    # Box [2, 4] -> [10, 12]: 4 x 4 cells of 2 x 2 px.
    boxes = torch.tensor([[2.0, 4.0, 10.0, 12.0]])
    kpts = Keypoints(
        [[
            [5.0, 9.0, 2],  # col floor(3 / 2) = 1, row floor(5 / 2) = 2 -> 2 * 4 + 1 = 9
            [10.0, 12.0, 1],  # on the far corner: the last cell, 15
            [2.0, 4.0, 2],  # on the near corner: cell 0
            [1.9, 5.0, 2],  # left of the box: not valid
            [5.0, 9.0, 0],  # unlabeled: not valid
        ]]
    )  # fmt: skip
    targets, valid = kpts.to_heatmap(boxes, 4)
    assert valid.tolist() == [[True, True, True, False, False]]
    assert targets.tolist() == [[9, 15, 0, 0, 0]]
    empty_targets, empty_valid = keypoints_to_heatmap(torch.zeros(0, 5, 3), torch.zeros(0, 4), 4)
    assert empty_targets.shape == (0, 5) and empty_valid.dtype == torch.bool


def test_heatmaps_to_keypoints_at_the_heatmap_resolution():
    # A 4 x 4 box of whole pixels: resampling to 4 x 4 changes nothing, so the peak cell is the
    # keypoint's pixel and its center the keypoint.
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 2] = 3.0  # row 1, col 2
    maps[0, 1, 3, 0] = 1.0
    out = heatmaps_to_keypoints(maps, torch.tensor([[10.0, 20.0, 14.0, 24.0]]))
    torch.testing.assert_close(out[0, :, :2], torch.tensor([[12.5, 21.5], [10.5, 23.5]]))
    torch.testing.assert_close(out[0, :, 2], torch.tensor([3.0, 1.0]))
    # The score is the peak's softmax probability among the 16 cells.
    expected = [math.exp(3) / (math.exp(3) + 15), math.e / (math.e + 15)]
    torch.testing.assert_close(out[0, :, 3], torch.tensor(expected))


def test_heatmaps_to_keypoints_in_a_fractional_box():
    # A 3.5 x 3.5 box is resampled to 4 x 4 pixels (no change) and the cell center scaled by 3.5 / 4.
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 1, 2] = 3.0
    out = heatmaps_to_keypoints(maps, torch.tensor([[10.0, 20.0, 13.5, 23.5]]))
    torch.testing.assert_close(out[0, 0, :2], torch.tensor([10 + 2.5 * 3.5 / 4, 20 + 1.5 * 3.5 / 4]))


def test_heatmaps_to_keypoints_upsampled():
    # A 2 x 2 heatmap over an 8 x 8 box: the bicubic resampling to 8 x 8 of a map with one hot cell
    # peaks in the hot cell's quarter of the box, and symmetric maps give mirrored keypoints.
    maps = torch.full((1, 2, 2, 2), -5.0)
    maps[0, 0, 0, 0] = 5.0
    maps[0, 1, 1, 1] = 5.0
    out = heatmaps_to_keypoints(maps, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    x, y = out[0, 0, 0].item(), out[0, 0, 1].item()
    assert 0 < x < 4 and 0 < y < 4
    torch.testing.assert_close(out[0, 1, :2], torch.tensor([8 - x, 8 - y]))
    # The peak of the resampled map is at least the largest heatmap logit (bicubic overshoots).
    assert out[0, 0, 2] >= 5.0


def test_padded_peaks_of_traced_programs_match_the_per_roi_resampling():
    """The loop-free decoding used in traced programs equals F.interpolate's bicubic resampling per RoI."""
    from detlib.structures.keypoints import _peaks_padded

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 3, 14, 14, generator=g) * 3
    corners = torch.rand(5, 2, generator=g) * 50
    boxes = torch.cat([corners, corners + 1 + torch.rand(5, 2, generator=g) * 60], dim=1)
    boxes[0, 2:] = boxes[0, :2] + 0.4  # smaller than a pixel: resampled to 1 x 1
    eager = heatmaps_to_keypoints(maps, boxes)
    ceil_sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1).ceil()
    peak, row, col = _peaks_padded(maps, ceil_sizes)
    torch.testing.assert_close(peak, eager[..., 2], rtol=0, atol=1e-4)  # float32 sums in another order
    for i, (width, height) in enumerate(ceil_sizes.tolist()):
        resampled = F.interpolate(maps[i : i + 1], size=(int(height), int(width)), mode="bicubic", align_corners=False)
        flat = resampled[0].flatten(1)
        # The same cell, or one whose resampled value ties with the maximum within rounding.
        picked = flat.gather(1, (row[i] * int(width) + col[i])[:, None])[:, 0]
        torch.testing.assert_close(picked, flat.max(dim=1).values, rtol=0, atol=1e-4)
    empty_peak, empty_row, _ = _peaks_padded(maps[:0], ceil_sizes[:0])
    assert empty_peak.shape == (0, 3) and empty_row.shape == (0, 3)
