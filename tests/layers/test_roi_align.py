"""detlib.layers.roi_align / ROIAlign against torchvision.ops.roi_align: values and input gradients."""

import pytest
import torch
from torchvision import ops

from detlib.layers import ROIAlign, roi_align


def random_rois(
    num_rois: int, batch_size: int, height: int, width: int, scale: float, seed: int, dtype=torch.float64
) -> torch.Tensor:
    """[K, 5] rois in input-image pixels; about a third reach outside the feature map."""
    g = torch.Generator().manual_seed(seed)
    image_h, image_w = height / scale, width / scale
    xy = (torch.rand(num_rois, 2, generator=g, dtype=dtype) * 1.4 - 0.2) * torch.tensor([image_w, image_h], dtype=dtype)
    wh = torch.rand(num_rois, 2, generator=g, dtype=dtype) * torch.tensor([image_w, image_h], dtype=dtype) / 2
    batch = torch.randint(0, batch_size, (num_rois, 1), generator=g).to(dtype)
    return torch.cat([batch, xy, xy + wh], dim=1)


def features(batch_size=2, channels=3, height=13, width=17, dtype=torch.float64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, channels, height, width, generator=g, dtype=dtype)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25, 1 / 16])
@pytest.mark.parametrize("output_size", [(7, 7), (3, 5)])
def test_forward_and_input_grad_match_torchvision(aligned, sampling_ratio, scale, output_size):
    x = features().requires_grad_()
    rois = random_rois(40, 2, 13, 17, scale, seed=int(1000 * scale) + sampling_ratio)
    args = (output_size, scale, sampling_ratio, aligned)

    out = roi_align(x, rois, *args)
    expected = ops.roi_align(x, rois, *args)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)

    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-6)


def test_tiny_and_inverted_rois_match_torchvision():
    x = features().requires_grad_()
    rois = torch.tensor(
        [
            [0, 3.0, 3.0, 3.0, 3.0],
            [1, 5.0, 2.0, 5.2, 9.0],
            [0, 9.0, 8.0, 4.0, 2.0],
            [1, -30, -30, -20, -20],
            [0, 16.5, 12.5, 40.0, 40.0],
        ],
        dtype=torch.float64,
    )
    for aligned in (True, False):
        for sampling_ratio in (0, 2):
            out = roi_align(x, rois, 4, 1.0, sampling_ratio, aligned)
            expected = ops.roi_align(x, rois, 4, 1.0, sampling_ratio, aligned)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
            grad_out = torch.randn_like(out)
            torch.testing.assert_close(
                torch.autograd.grad(out, x, grad_out)[0],
                torch.autograd.grad(expected, x, grad_out)[0],
                rtol=0,
                atol=1e-6,
            )


def test_float32_matches_torchvision():
    x = features(channels=8, height=32, width=40, dtype=torch.float32)
    rois = random_rois(64, 2, 32, 40, 0.25, seed=7, dtype=torch.float32)
    out = roi_align(x, rois, 7, 0.25, 0, True)
    torch.testing.assert_close(out, ops.roi_align(x, rois, 7, 0.25, 0, True), rtol=1e-5, atol=1e-5)


def test_empty_rois():
    x = features().requires_grad_()
    out = roi_align(x, torch.zeros(0, 5, dtype=torch.float64), 7, 0.5, 2, True)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert ROIAlign(7, 0.5, 2)(x, [torch.zeros(0, 4, dtype=torch.float64)] * 2).shape == (0, 3, 7, 7)


def test_gradcheck():
    x = features(batch_size=2, channels=2, height=6, width=7).requires_grad_()
    rois = torch.tensor(
        [[0, 0.5, 1.0, 5.5, 4.0], [1, -1.0, 2.0, 3.0, 7.5], [1, 2.2, 0.3, 6.4, 2.9]], dtype=torch.float64
    )
    for aligned in (True, False):
        for sampling_ratio in (0, 2):
            assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), 1.0, sampling_ratio, aligned), (x,))


def test_module_accepts_per_image_boxes():
    from detlib.structures import Boxes

    x = features()
    rois = random_rois(12, 2, 13, 17, 0.5, seed=3)
    rois = rois[rois[:, 0].argsort(stable=True)].float().double()  # exact in Boxes' float32
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    pooler = ROIAlign((5, 4), spatial_scale=0.5, sampling_ratio=0)
    assert pooler.aligned
    expected = ops.roi_align(x, rois, (5, 4), 0.5, 0, True)
    torch.testing.assert_close(pooler(x, rois), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooler(x, per_image), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooler(x, [Boxes(b) for b in per_image]), expected, rtol=0, atol=1e-12)
    assert "output_size=(5, 4)" in repr(pooler)


def test_rois_are_cast_to_input_dtype_and_non_contiguous_input_works():
    x = features(dtype=torch.float32).transpose(2, 3)  # non-contiguous [2, 3, 17, 13]
    rois = random_rois(10, 2, 17, 13, 1.0, seed=5, dtype=torch.float64)
    expected = ops.roi_align(x.contiguous(), rois.float(), 3, 1.0, 2, True)
    torch.testing.assert_close(roi_align(x, rois, 3, 1.0, 2, True), expected, rtol=0, atol=1e-6)


def test_autocast_pools_in_float32():
    x = features(dtype=torch.float32)
    rois = random_rois(10, 2, 13, 17, 0.5, seed=6, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(x.bfloat16(), rois, 3, 0.5, 2, True)
    assert out.dtype == torch.bfloat16
    expected = ops.roi_align(x.bfloat16().float(), rois, 3, 0.5, 2, True).bfloat16()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# Rois for the channels_last tests: random ones (some reaching outside the map) plus empty, inverted, tiny and
# wholly outside ones, on both images.
def mixed_rois(height: int, width: int, scale: float, seed: int, dtype=torch.float32) -> torch.Tensor:
    special = torch.tensor(
        [
            [0, 3.0, 3.0, 3.0, 3.0],
            [1, 5.0, 2.0, 5.2, 9.0],
            [0, 9.0, 8.0, 4.0, 2.0],
            [1, -30, -30, -20, -20],
            [0, -5.0, -3.0, 20.0, 11.0],
            [1, 16.5, 12.5, 400.0, 400.0],
        ],
        dtype=dtype,
    )
    special[:, 1:] /= scale
    return torch.cat([random_rois(12, 2, height, width, scale, seed, dtype=dtype), special])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [7, 14])
def test_channels_last_matches_torchvision(aligned, sampling_ratio, output_size):
    x = features(channels=19, height=13, width=17, dtype=torch.float32, seed=1)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x = x.requires_grad_()
    rois = mixed_rois(13, 17, 0.5, seed=20 + sampling_ratio)
    args = (output_size, 0.5, sampling_ratio, aligned)

    out = roi_align(x_cl, rois, *args)
    expected = ops.roi_align(x, rois, *args)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)

    grad_out = torch.randn_like(expected)
    (grad,) = torch.autograd.grad(out, x_cl, grad_out)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-4)


def test_channels_last_float64_gradcheck_and_one_by_one_output():
    x = features(batch_size=2, channels=3, height=6, width=7).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    rois = torch.tensor(
        [[0, 0.5, 1.0, 5.5, 4.0], [1, -1.0, 2.0, 3.0, 7.5], [1, 2.2, 0.3, 6.4, 2.9]], dtype=torch.float64
    )
    for output_size in ((2, 3), (1, 1)):
        for aligned in (True, False):
            fn = lambda t: roi_align(t, rois, output_size, 1.0, 0, aligned)
            assert torch.autograd.gradcheck(fn, (x,))
            # A 1x1 output's gradient has no layout of its own: the input's still decides the gradient's.
            (grad,) = torch.autograd.grad(fn(x).sum(), x)
            assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()


def test_channels_last_input_is_not_copied():
    # The CPU kernels read a channels_last map in place: no copy of it (or of anything its size) is made.
    x = features(channels=16, height=24, width=32, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    rois = mixed_rois(24, 32, 0.25, seed=4)
    x.requires_grad_()
    with torch.profiler.profile(record_shapes=True) as prof:
        out = roi_align(x, rois, 7, 0.25, 0, True)
        (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    copies = [
        e.input_shapes
        for e in prof.events()
        if e.name in ("aten::copy_", "aten::contiguous", "aten::clone", "aten::_to_copy")
    ]
    assert not any(list(x.shape) in shapes for shapes in copies), copies
    # Same values as from the NCHW map, which takes the other kernel.
    x_nchw = x.detach().contiguous().requires_grad_()
    out_nchw = roi_align(x_nchw, rois, 7, 0.25, 0, True)
    torch.testing.assert_close(out, out_nchw, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, torch.autograd.grad(out_nchw, x_nchw, torch.ones_like(out))[0], rtol=0, atol=1e-4)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_backward_is_deterministic_across_thread_counts():
    x = features(channels=40, height=20, width=24, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    rois = mixed_rois(20, 24, 0.5, seed=9)
    out = roi_align(x, rois, 7, 0.5, 0, True)
    grad_out = torch.randn_like(out)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            grads.append(torch.autograd.grad(out, x, grad_out, retain_graph=True)[0])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@pytest.mark.parametrize(
    "x, rois, error, message",
    [
        (features(), torch.zeros(3, 4, dtype=torch.float64), ValueError, r"Tensor\[K, 5\].*list"),
        (features(), torch.zeros(3, 5, 1, dtype=torch.float64), ValueError, r"Tensor\[K, 5\]"),
        (features()[0], torch.zeros(3, 5, dtype=torch.float64), ValueError, r"Tensor\[N, C, H, W\]"),
        (features(), [torch.zeros(3, 5, dtype=torch.float64)], ValueError, r"image 0 must be Tensor\[Ki, 4\]"),
        (features(), "boxes", TypeError, "rois must be"),
        (features(), torch.zeros(3, 5, device="meta"), ValueError, "meta"),
        (features(), torch.tensor([[2.0, 0, 0, 4, 4]]), RuntimeError, "batch index 2"),
        (features(), torch.tensor([[-1.0, 0, 0, 4, 4]]), RuntimeError, "batch index -1"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int64), torch.zeros(1, 5), RuntimeError, "unsupported dtype"),
    ],
)
def test_rejects_bad_input(x, rois, error, message):
    with pytest.raises(error, match=message):
        roi_align(x, rois, 7, 1.0, 2, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_cuda_matches_torchvision(dtype, aligned, sampling_ratio):
    x = features(channels=16, height=32, width=40, dtype=dtype).cuda().requires_grad_()
    rois = random_rois(200, 2, 32, 40, 0.25, seed=11, dtype=dtype).cuda()
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    out = roi_align(x, rois, 7, 0.25, sampling_ratio, aligned)
    expected = ops.roi_align(x, rois, 7, 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(
        torch.autograd.grad(out, x, grad_out)[0], torch.autograd.grad(expected, x, grad_out)[0], rtol=tol, atol=tol
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_close_to_float32(dtype):
    x = features(channels=16, height=32, width=40, dtype=torch.float32).cuda()
    rois = random_rois(100, 2, 32, 40, 0.25, seed=12, dtype=torch.float32).cuda()
    out = roi_align(x.to(dtype), rois, 7, 0.25, 0, True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), roi_align(x, rois, 7, 0.25, 0, True), rtol=2e-2, atol=2e-2)
