"""detlib.layers.nms / batched_nms against torchvision.ops, index for index."""

import pytest
import torch
from torchvision import ops

from detlib.layers import batched_nms, nms


def random_boxes(n: int, seed: int, dtype=torch.float32, size: float = 400.0) -> torch.Tensor:
    """XYXY boxes with widths and heights up to size / 2, crowded enough that NMS suppresses many."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * size
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


def random_scores(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 200, 1500])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_torchvision(dtype, n, threshold):
    boxes, scores = random_boxes(n, n, dtype), random_scores(n, n, dtype)
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, ops.nms(boxes, scores, threshold))


def test_nms_empty():
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_nms_degenerate_boxes():
    boxes = random_boxes(300, 3)
    boxes[::3, 2] = boxes[::3, 0]  # zero width
    boxes[1::5, 3] = boxes[1::5, 1]  # zero height
    boxes[2::7] = boxes[2::7, :1].repeat(1, 4)  # points
    boxes[100:120] = boxes[100]  # exact duplicates
    scores = random_scores(300, 3)
    for threshold in (0.0, 0.5, 1.0):
        assert torch.equal(nms(boxes, scores, threshold), ops.nms(boxes, scores, threshold))


def test_nms_tied_scores_follow_torchvision_order():
    boxes = random_boxes(500, 4)
    scores = (random_scores(500, 4) * 8).floor()  # 8 distinct values, many ties
    for threshold in (0.3, 0.7):
        assert torch.equal(nms(boxes, scores, threshold), ops.nms(boxes, scores, threshold))


def test_nms_non_contiguous_inputs():
    boxes = random_boxes(400, 5, torch.float64)
    wide = torch.zeros(400, 8, dtype=torch.float64)
    wide[:, ::2] = boxes
    strided_boxes = wide[:, ::2]
    strided_scores = random_scores(800, 5, torch.float64)[::2]
    assert not strided_boxes.is_contiguous() and not strided_scores.is_contiguous()
    expected = ops.nms(strided_boxes.contiguous(), strided_scores.contiguous(), 0.5)
    assert torch.equal(nms(strided_boxes, strided_scores, 0.5), expected)


@pytest.mark.parametrize("n", [300, 3000])  # torchvision offsets coordinates below 1000 boxes, loops above
@pytest.mark.parametrize("num_groups", [5, 80])
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_batched_nms_matches_torchvision(n, num_groups, threshold):
    boxes, scores = random_boxes(n, n), random_scores(n, n)
    idxs = torch.randint(0, num_groups, (n,), generator=torch.Generator().manual_seed(n))
    keep = batched_nms(boxes, scores, idxs, threshold)
    assert torch.equal(keep, ops.batched_nms(boxes, scores, idxs, threshold))


def test_batched_nms_keeps_overlapping_boxes_of_different_groups():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)


@pytest.mark.parametrize(
    "boxes, scores, message",
    [
        (torch.zeros(3, 5), torch.zeros(3), r"boxes must be Tensor\[N, 4\]"),
        (torch.zeros(12), torch.zeros(3), r"boxes must be Tensor\[N, 4\]"),
        (torch.zeros(3, 4), torch.zeros(4), r"scores must be Tensor\[N\]"),
        (torch.zeros(3, 4), torch.zeros(3, 1), r"scores must be Tensor\[N\]"),
        (torch.zeros(3, 4), torch.zeros(3, dtype=torch.float64), "same dtype"),
        (torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), "unsupported dtype"),
        (torch.zeros(3, 4), torch.zeros(3, device="meta"), "same device"),
    ],
)
def test_nms_rejects_bad_input(boxes, scores, message):
    with pytest.raises(RuntimeError, match=message):
        nms(boxes, scores, 0.5)


def test_batched_nms_rejects_bad_input():
    boxes, scores = torch.zeros(3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(boxes, scores, torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="scores"):
        batched_nms(boxes, torch.zeros(4), torch.zeros(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="boxes"):
        batched_nms(torch.zeros(3, 5), scores, torch.zeros(3, dtype=torch.int64), 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 500, 6000])
def test_nms_cuda_matches_torchvision(dtype, n):
    boxes, scores = random_boxes(n, n, dtype).cuda(), random_scores(n, n, dtype).cuda()
    for threshold in (0.0, 0.5, 0.7, 1.0):
        keep = nms(boxes, scores, threshold)
        assert keep.is_cuda
        assert torch.equal(keep.cpu(), ops.nms(boxes, scores, threshold).cpu())
    idxs = torch.randint(0, 80, (n,), device="cuda")
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), ops.batched_nms(boxes, scores, idxs, 0.5))
