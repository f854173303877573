import numpy as np
import pytest
import torch

from detlib.modeling import postprocessing
from detlib.modeling.postprocessing import detector_postprocess, paste_masks_in_image
from detlib.structures import Boxes, Instances


def _reference_paste(mask: np.ndarray, box, height: int, width: int) -> np.ndarray:
    """Bilinear sampling of `mask` (zero outside) at every pixel center, the box spanning the mask."""
    m = mask.shape[0]
    padded = np.zeros((m + 2, m + 2))
    padded[1:-1, 1:-1] = mask
    x0, y0, x1, y1 = box
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            # Continuous mask coordinates of the pixel center, in units of mask cells, centers at k.
            u = (j + 0.5 - x0) / (x1 - x0) * m - 0.5
            v = (i + 0.5 - y0) / (y1 - y0) * m - 0.5
            if not (-1 < u < m and -1 < v < m):
                continue
            u0, v0 = int(np.floor(u)), int(np.floor(v))
            du, dv = u - u0, v - v0
            patch = padded[v0 + 1 : v0 + 3, u0 + 1 : u0 + 3]
            out[i, j] = (
                patch[0, 0] * (1 - du) * (1 - dv)
                + patch[0, 1] * du * (1 - dv)
                + patch[1, 0] * (1 - du) * dv
                + patch[1, 1] * du * dv
            )
    return out


def test_full_mask_fills_exactly_its_box():
    masks = torch.ones(1, 28, 28)
    out = paste_masks_in_image(masks, Boxes(torch.tensor([[2.0, 3.0, 7.0, 5.0]])), (8, 10))
    expected = torch.zeros(8, 10, dtype=torch.bool)
    expected[3:5, 2:7] = True
    assert out.dtype == torch.bool
    assert torch.equal(out[0], expected)


def test_half_mask_by_hand():
    # Left half of a 4x4 mask on an 8x8 box: pixel centers 0.5..3.5 sample >= 0.75, 4.5 samples 0.25.
    masks = torch.zeros(1, 4, 4)
    masks[0, :, :2] = 1.0
    out = paste_masks_in_image(masks, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:, :4] = True
    assert torch.equal(out[0], expected)


def test_random_masks_match_reference_bilinear_paste():
    rng = np.random.default_rng(0)
    height, width = 23, 31
    masks = rng.uniform(size=(3, 7, 7))
    boxes = np.array([[2.3, 1.7, 20.9, 15.2], [-3.0, 5.5, 12.0, 30.0], [25.2, 0.0, 35.0, 9.9]])
    out = paste_masks_in_image(
        torch.tensor(masks, dtype=torch.float32), torch.tensor(boxes, dtype=torch.float32), (height, width)
    )
    for k in range(3):
        ref = _reference_paste(masks[k], boxes[k], height, width)
        decided = np.abs(ref - 0.5) > 1e-4  # pixels at the threshold may go either way in float32
        assert np.array_equal(out[k].numpy()[decided], (ref >= 0.5)[decided])
        assert decided.mean() > 0.99


def test_chunking_does_not_change_the_result(monkeypatch):
    torch.manual_seed(0)
    masks = torch.rand(7, 14, 14)
    corners = torch.rand(7, 2) * 40
    boxes = torch.cat([corners, corners + 5 + torch.rand(7, 2) * 30], dim=1)
    whole = paste_masks_in_image(masks, boxes, (50, 60))
    monkeypatch.setattr(postprocessing, "_PASTE_MEMORY_BUDGET", 2 * 50 * 60 * postprocessing._BYTES_PER_PIXEL)
    chunked = paste_masks_in_image(masks, boxes, (50, 60))
    assert torch.equal(whole, chunked)
    singles = torch.cat([paste_masks_in_image(masks[i : i + 1], boxes[i : i + 1], (50, 60)) for i in range(7)])
    assert torch.equal(whole, singles)


def test_paste_edge_cases():
    assert paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)
    outside = paste_masks_in_image(torch.ones(1, 28, 28), torch.tensor([[20.0, 20.0, 30.0, 30.0]]), (5, 6))
    assert not outside.any()
    with pytest.raises(ValueError, match="boxes"):
        paste_masks_in_image(torch.ones(2, 28, 28), torch.zeros(1, 4), (5, 6))
    with pytest.raises(ValueError, match="M x M"):
        paste_masks_in_image(torch.ones(2, 28, 14), torch.zeros(2, 4), (5, 6))


def test_detector_postprocess_rescales_clips_and_drops_empty_boxes():
    results = Instances((10, 20))
    results.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 5.0, 6.0], [15.0, 5.0, 25.0, 12.0], [20.0, 0.0, 30.0, 4.0]]))
    results.scores = torch.tensor([0.9, 0.8, 0.7])
    results.pred_classes = torch.tensor([0, 1, 2])
    results.pred_masks = torch.ones(3, 1, 28, 28)

    out = detector_postprocess(results, 20, 30)  # scale x 1.5, y 2
    assert out.image_size == (20, 30)
    # The third box lies right of the image: clipped to zero width and dropped.
    assert torch.equal(out.pred_boxes.tensor, torch.tensor([[1.5, 4.0, 7.5, 12.0], [22.5, 10.0, 30.0, 20.0]]))
    assert torch.equal(out.scores, torch.tensor([0.9, 0.8]))
    assert torch.equal(out.pred_classes, torch.tensor([0, 1]))
    assert out.pred_masks.shape == (2, 20, 30) and out.pred_masks.dtype == torch.bool
    # Box [1.5, 7.5] x [4, 12]: rows 4..11 (centers 4.5..11.5) and columns 1..7, whose centers 1.5 and
    # 7.5 lie on the box edges, where half the sample comes from the full mask: 0.5, at the threshold.
    expected = torch.zeros(20, 30, dtype=torch.bool)
    expected[4:12, 1:8] = True
    assert torch.equal(out.pred_masks[0], expected)


def test_detector_postprocess_keeps_all_fields_when_empty():
    results = Instances((10, 20))
    results.pred_boxes = Boxes(torch.zeros(0, 4))
    results.scores = torch.zeros(0)
    results.pred_classes = torch.zeros(0, dtype=torch.int64)
    results.pred_masks = torch.zeros(0, 1, 28, 28)
    out = detector_postprocess(results, 30, 40)
    assert set(out.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert out.pred_masks.shape == (0, 30, 40)


def test_detector_postprocess_proposals():
    results = Instances((10, 10))
    results.proposal_boxes = Boxes(torch.tensor([[1.0, 1.0, 4.0, 4.0]]))
    results.objectness_logits = torch.tensor([2.0])
    out = detector_postprocess(results, 5, 5)
    assert torch.equal(out.proposal_boxes.tensor, torch.tensor([[0.5, 0.5, 2.0, 2.0]]))
    with pytest.raises(ValueError, match="no boxes"):
        detector_postprocess(Instances((4, 4), scores=torch.zeros(1)), 5, 5)


def test_paste_masks_exported_equals_eager():
    """Exported, pasting interpolates over the whole image (no data-dependent windows): the same masks, for any
    number of boxes, zero included."""

    class Paste(torch.nn.Module):
        def forward(self, masks, boxes):
            return paste_masks_in_image(masks, boxes, (90, 120))

    g = torch.Generator().manual_seed(3)
    corners = torch.rand(12, 2, generator=g) * torch.tensor([110.0, 80.0]) - 5
    boxes = torch.cat([corners, corners + 1 + torch.rand(12, 2, generator=g) * 60], dim=1)
    masks = torch.rand(12, 28, 28, generator=g)
    count = torch.export.Dim("count", min=0, max=1000)
    program = torch.export.export(
        Paste(), (masks, boxes), dynamic_shapes=({0: count}, {0: count}), strict=False
    ).module()
    for n in (12, 5, 0):
        expected = paste_masks_in_image(masks[:n], boxes[:n], (90, 120))
        assert torch.equal(program(masks[:n], boxes[:n]), expected)
