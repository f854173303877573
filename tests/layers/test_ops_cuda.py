"""CUDA kernels of detlib._C against torchvision.ops on the same GPU, and against detlib's CPU kernels."""

import pytest
import torch
from torchvision import ops

from detlib.layers import ModulatedDeformConv, ROIAlign, batched_nms, deform_conv2d, nms, roi_align

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = "cuda"


def proposal_boxes(n: int, seed: int, dtype=torch.float32, device=CUDA) -> torch.Tensor:
    """XYXY boxes like RPN proposals in a 1333x800 image: log-uniform sizes 4..400 px, clipped."""
    g = torch.Generator().manual_seed(seed)
    center = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([1333.0, 800.0], dtype=torch.float64)
    size = torch.exp(torch.empty(n, 2, dtype=torch.float64).uniform_(1.4, 6.0, generator=g))
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 1333)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 800)
    return boxes.to(device=device, dtype=dtype)


def random_scores(n: int, seed: int, dtype=torch.float32, device=CUDA) -> torch.Tensor:
    """Distinct scores in (0, 1] (as far as `dtype` resolves them), so ties come only where a test makes them."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    return ((order + 1).double() / n).to(device, dtype)


# ---------------------------------------------------------------------------------------------- NMS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 129, 2000])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_torchvision(dtype, n, threshold):
    boxes, scores = proposal_boxes(n, n, dtype), random_scores(n, n, dtype)
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64 and keep.device == boxes.device
    assert torch.equal(keep, ops.nms(boxes, scores, threshold))


def test_nms_more_blocks_than_greedy_threads():
    # 70k boxes are 1094 blocks of 64, more than the 1024 threads of the greedy pass.
    boxes, scores = proposal_boxes(70_000, 11), random_scores(70_000, 11)
    assert torch.equal(nms(boxes, scores, 0.7), ops.nms(boxes, scores, 0.7))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nms_reduced_precision_matches_torchvision(dtype):
    boxes, scores = proposal_boxes(1500, 5, dtype), random_scores(1500, 5, dtype)
    try:
        expected = ops.nms(boxes, scores, 0.5)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torchvision has no {dtype} CUDA nms: {e}")
    assert torch.equal(nms(boxes, scores, 0.5), expected)


def test_nms_degenerate_boxes_and_ties():
    boxes = proposal_boxes(700, 3)
    boxes[::3, 2] = boxes[::3, 0]  # zero width
    boxes[1::5, 3] = boxes[1::5, 1]  # zero height
    boxes[2::7] = boxes[2::7, :1].repeat(1, 4)  # points
    boxes[100:140] = boxes[100]  # exact duplicates
    scores = (random_scores(700, 3) * 6).ceil()  # 6 distinct values: many ties, stable order decides
    for threshold in (0.0, 0.5, 1.0):
        assert torch.equal(nms(boxes, scores, threshold), ops.nms(boxes, scores, threshold))


def test_nms_empty_and_non_contiguous():
    keep = nms(torch.zeros(0, 4, device=CUDA), torch.zeros(0, device=CUDA), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.is_cuda

    boxes = proposal_boxes(500, 6, torch.float64)
    wide = torch.zeros(500, 8, dtype=torch.float64, device=CUDA)
    wide[:, ::2] = boxes
    scores = random_scores(1000, 6, torch.float64)[::2]
    assert not wide[:, ::2].is_contiguous() and not scores.is_contiguous()
    assert torch.equal(nms(wide[:, ::2], scores, 0.6), ops.nms(boxes, scores.contiguous(), 0.6))


def test_nms_cuda_matches_detlib_cpu():
    boxes, scores = proposal_boxes(3000, 8, torch.float64), random_scores(3000, 8, torch.float64)
    for threshold in (0.3, 0.7):
        assert torch.equal(nms(boxes, scores, threshold).cpu(), nms(boxes.cpu(), scores.cpu(), threshold))


def test_nms_on_a_side_stream():
    boxes, scores = proposal_boxes(4000, 9), random_scores(4000, 9)
    expected = ops.nms(boxes, scores, 0.5)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        keep = nms(boxes, scores, 0.5)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(keep, expected)


@pytest.mark.parametrize("n, groups", [(1000, 5), (1000, 80), (8000, 5), (8000, 80)])
def test_batched_nms_matches_torchvision(n, groups):
    # 8000 boxes take the per-group path of both implementations, 1000 the coordinate offset.
    boxes, scores = proposal_boxes(n, n + groups), random_scores(n, n + groups)
    idxs = torch.randint(0, groups, (n,), generator=torch.Generator().manual_seed(groups)).to(CUDA)
    for threshold in (0.5, 0.7):
        assert torch.equal(batched_nms(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs, threshold))


# ----------------------------------------------------------------------------------------- ROIAlign


def random_rois(
    k: int, seed: int, batch: int, height: int, width: int, scale: float, dtype, device=CUDA, inside: bool = False
):
    """Tensor[K, 5] rois in image pixels; about a third reach past the feature map's border unless `inside`."""
    g = torch.Generator().manual_seed(seed)
    image_hw = torch.tensor([width, height], dtype=torch.float64) / scale
    low, span = (0.0, 0.5) if inside else (-0.15, 1.3)
    xy = (torch.rand(k, 2, generator=g, dtype=torch.float64) * span + low) * image_hw
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * image_hw * (0.45 if inside else 0.6)
    index = torch.randint(0, batch, (k, 1), generator=g).double()
    return torch.cat([index, xy, xy + wh], dim=1).to(device=device, dtype=dtype)


def features(shape, seed: int, dtype, device=CUDA) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def forward_and_grad(fn, x: torch.Tensor, rois: torch.Tensor, upstream: torch.Tensor, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, rois, **kwargs)
    out.backward(upstream)
    return out.detach(), x.grad


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_align_float64_matches_torchvision(aligned, sampling_ratio, scale):
    x = features((2, 3, 23, 31), seed=1, dtype=torch.float64)
    rois = random_rois(
        40, seed=int(scale * 8) + sampling_ratio, batch=2, height=23, width=31, scale=scale, dtype=torch.float64
    )
    kwargs = dict(output_size=(5, 4), spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    upstream = features((40, 3, 5, 4), seed=2, dtype=torch.float64)
    out, grad = forward_and_grad(roi_align, x, rois, upstream, **kwargs)
    expected_out, expected_grad = forward_and_grad(ops.roi_align, x, rois, upstream, **kwargs)
    torch.testing.assert_close(out, expected_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("output_size, sampling_ratio", [((7, 7), 0), ((14, 14), 2)])
def test_roi_align_float32_matches_torchvision(output_size, sampling_ratio):
    x = features((2, 16, 50, 76), seed=3, dtype=torch.float32)
    rois = random_rois(200, seed=4, batch=2, height=50, width=76, scale=0.25, dtype=torch.float32)
    kwargs = dict(output_size=output_size, spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=True)
    upstream = features((200, 16, *output_size), seed=5, dtype=torch.float32)
    out, grad = forward_and_grad(roi_align, x, rois, upstream, **kwargs)
    expected_out, expected_grad = forward_and_grad(ops.roi_align, x, rois, upstream, **kwargs)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_roi_align_reduced_precision_close_to_float64(dtype, tol):
    """Half and bfloat16 against the float64 result on the same (rounded) inputs: errors of one
    rounding of the output, since the kernel accumulates in float32. The rois stay inside the map:
    at its border a sample's weight jumps from full to zero, and coarse bfloat16 coordinates put
    samples exactly there, where float32 and float64 geometry legitimately disagree."""
    x = features((2, 8, 40, 60), seed=6, dtype=dtype)
    rois = random_rois(100, seed=7, batch=2, height=40, width=60, scale=0.5, dtype=dtype, inside=True)
    upstream = features((100, 8, 7, 7), seed=8, dtype=dtype)
    kwargs = dict(output_size=7, spatial_scale=0.5, sampling_ratio=0, aligned=True)
    out, grad = forward_and_grad(roi_align, x, rois, upstream, **kwargs)
    ref_out, ref_grad = forward_and_grad(roi_align, x.double(), rois.double(), upstream.double(), **kwargs)
    assert out.dtype == dtype and grad.dtype == dtype
    assert ((out.double() - ref_out).norm() / ref_out.norm()).item() < tol
    assert ((grad.double() - ref_grad).norm() / ref_grad.norm()).item() < tol


def test_roi_align_cuda_matches_detlib_cpu():
    x = features((2, 4, 30, 40), seed=9, dtype=torch.float64)
    rois = random_rois(60, seed=10, batch=2, height=30, width=40, scale=0.5, dtype=torch.float64)
    upstream = features((60, 4, 6, 6), seed=11, dtype=torch.float64)
    for aligned in (True, False):
        kwargs = dict(output_size=6, spatial_scale=0.5, sampling_ratio=0, aligned=aligned)
        out, grad = forward_and_grad(roi_align, x, rois, upstream, **kwargs)
        cpu_out, cpu_grad = forward_and_grad(roi_align, x.cpu(), rois.cpu(), upstream.cpu(), **kwargs)
        torch.testing.assert_close(out.cpu(), cpu_out, atol=1e-10, rtol=0)
        torch.testing.assert_close(grad.cpu(), cpu_grad, atol=1e-10, rtol=0)


def test_roi_align_degenerate_rois_match_torchvision():
    x = features((1, 2, 12, 12), seed=12, dtype=torch.float64)
    rois = torch.tensor(
        [
            [0, 4.0, 4.0, 4.0, 4.0],  # a point
            [0, 3.0, 2.0, 3.0, 9.0],  # zero width
            [0, 8.0, 8.0, 2.0, 2.0],  # x2 < x1
            [0, -40.0, -40.0, -20.0, -20.0],  # entirely outside
            [0, -3.0, 5.0, 30.0, 7.0],  # across both borders
        ],
        dtype=torch.float64,
        device=CUDA,
    )
    upstream = features((5, 2, 3, 3), seed=13, dtype=torch.float64)
    for aligned in (True, False):
        for sampling_ratio in (0, 2):
            kwargs = dict(output_size=3, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=aligned)
            out, grad = forward_and_grad(roi_align, x, rois, upstream, **kwargs)
            expected_out, expected_grad = forward_and_grad(ops.roi_align, x, rois, upstream, **kwargs)
            torch.testing.assert_close(out, expected_out, atol=1e-6, rtol=0)
            torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_gradcheck(aligned):
    x = features((2, 2, 8, 9), seed=14, dtype=torch.float64).requires_grad_(True)
    rois = random_rois(6, seed=15, batch=2, height=8, width=9, scale=1.0, dtype=torch.float64)
    # Atomic adds in another order may change the last bits of a float64 gradient.
    pooled = lambda t: roi_align(t, rois, (3, 2), spatial_scale=1.0, sampling_ratio=2, aligned=aligned)  # noqa: E731
    assert torch.autograd.gradcheck(pooled, (x,), nondet_tol=1e-12)


def test_roi_align_empty_rois():
    x = features((2, 3, 10, 10), seed=16, dtype=torch.float32).requires_grad_(True)
    out = ROIAlign((7, 7), spatial_scale=1.0, sampling_ratio=0)(x, torch.zeros(0, 5, device=CUDA))
    assert out.shape == (0, 3, 7, 7) and out.is_cuda
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))

    per_image = [torch.zeros(0, 4, device=CUDA), torch.zeros(0, 4, device=CUDA)]
    assert ROIAlign(7, 1.0, 0)(x, per_image).shape == (0, 3, 7, 7)


def test_roi_align_per_image_boxes_match_batch_index_rois():
    x = features((2, 4, 20, 20), seed=17, dtype=torch.float32)
    boxes = [proposal_boxes(5, 18) / 50, proposal_boxes(3, 19) / 50]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=CUDA), b], 1) for i, b in enumerate(boxes)])
    pooler = ROIAlign((4, 4), spatial_scale=1.0, sampling_ratio=2)
    torch.testing.assert_close(pooler(x, boxes), ops.roi_align(x, rois, (4, 4), 1.0, 2, True), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- deformable convolution


def deform_inputs(dtype, masked: bool, seed: int, groups: int = 1, offset_groups: int = 1, batch: int = 2):
    """Inputs of a 3x3, stride 1, padding 1 deformable convolution of 8 -> 6 channels on 13x17 maps, offsets
    within +-3 px (samples past the border too), and the gradient flowing into its output."""
    g = torch.Generator().manual_seed(seed)
    h, w = 13, 17
    tensors = {
        "input": torch.randn(batch, 8, h, w, generator=g, dtype=torch.float64),
        "offset": (torch.rand(batch, 2 * offset_groups * 9, h, w, generator=g, dtype=torch.float64) * 2 - 1) * 3,
        "weight": torch.randn(6, 8 // groups, 3, 3, generator=g, dtype=torch.float64) / 8,
        "bias": torch.randn(6, generator=g, dtype=torch.float64),
        "mask": torch.rand(batch, offset_groups * 9, h, w, generator=g, dtype=torch.float64) if masked else None,
        "upstream": torch.randn(batch, 6, h, w, generator=g, dtype=torch.float64),
    }
    return {k: None if t is None else t.to(CUDA, dtype) for k, t in tensors.items()}


def deform_forward_backward(fn, tensors):
    """fn's output and the gradients of <output, upstream> w.r.t. each of its tensors."""
    names = [k for k in ("input", "offset", "weight", "bias", "mask") if tensors[k] is not None]
    leaves = {k: tensors[k].clone().requires_grad_(True) for k in names}
    out = fn(leaves["input"], leaves["offset"], leaves["weight"], leaves["bias"], padding=1, mask=leaves.get("mask"))
    out.backward(tensors["upstream"])
    return {"output": out.detach(), **{k: t.grad for k, t in leaves.items()}}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("groups, offset_groups", [(1, 1), (2, 4)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_deform_conv_matches_torchvision(masked, groups, offset_groups, dtype, tol):
    tensors = deform_inputs(dtype, masked, seed=groups + offset_groups, groups=groups, offset_groups=offset_groups)
    ours = deform_forward_backward(deform_conv2d, tensors)
    theirs = deform_forward_backward(ops.deform_conv2d, tensors)
    assert set(ours) == set(theirs)
    for key in ours:
        scale = theirs[key].abs().max().item()
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=tol * max(scale, 1.0), msg=key)


def test_deform_conv_cuda_matches_detlib_cpu():
    tensors = deform_inputs(torch.float64, masked=True, seed=5, groups=2, offset_groups=2)
    ours = deform_forward_backward(deform_conv2d, tensors)
    cpu = deform_forward_backward(deform_conv2d, {k: t.cpu() for k, t in tensors.items()})
    assert set(ours) == set(cpu)
    for key in ours:
        torch.testing.assert_close(ours[key].cpu(), cpu[key], rtol=0, atol=1e-10, msg=key)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_deform_conv_reduced_precision_close_to_float64(dtype, tol):
    """Half and bfloat16 against float64 on the same rounded inputs: sampling and reductions run in float32."""
    tensors = deform_inputs(dtype, masked=True, seed=6)
    ours = deform_forward_backward(deform_conv2d, tensors)
    reference = deform_forward_backward(deform_conv2d, {k: t.double() for k, t in tensors.items()})
    for key in ours:
        assert ours[key].dtype == dtype, key
        error = (ours[key].double() - reference[key]).norm() / reference[key].norm()
        assert error.item() < tol, (key, error.item())


def test_deform_conv_gradcheck():
    tensors = deform_inputs(torch.float64, masked=True, seed=7, groups=2, offset_groups=2, batch=1)
    names = ("input", "offset", "weight", "bias", "mask")
    leaves = tuple(tensors[k].clone().requires_grad_(True) for k in names)

    def convolve(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)

    # Atomic adds in another order may change the last bits of the input's gradient.
    assert torch.autograd.gradcheck(convolve, leaves, nondet_tol=1e-12)


def test_deform_conv_empty_batch():
    conv = ModulatedDeformConv(8, 6, 3, padding=1).to(CUDA)
    x = torch.zeros(0, 8, 13, 17, device=CUDA, requires_grad=True)
    out = conv(x, torch.zeros(0, 18, 13, 17, device=CUDA), torch.zeros(0, 9, 13, 17, device=CUDA))
    assert out.shape == (0, 6, 13, 17) and out.is_cuda
    out.sum().backward()
    assert torch.equal(conv.weight.grad, torch.zeros_like(conv.weight))
