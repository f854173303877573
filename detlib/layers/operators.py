"""
The Python half of the torch.ops.detlib operators that csrc/register_ops.cpp defines: fake kernels (shapes
only, what torch.compile and torch.export trace with) and the autograd formulas of ROIAlign and deformable
convolution. The C++ library names this module as its Python module, so torch imports it wherever the
operators are used, e.g. when a saved torch.export program is loaded. Importing it requires `detlib._C` to be loaded.
"""

import torch
from torch._prims_common import suggest_memory_format

__all__ = []


def _cpu_layout(t: torch.Tensor) -> torch.memory_format:
    """The layout the CPU ROIAlign kernels work in for `t` (csrc/register_ops.cpp, cpu_layout): its strides'."""
    return torch.channels_last if suggest_memory_format(t) == torch.channels_last else torch.contiguous_format


@torch.library.register_fake("detlib::nms")
def _nms_fake(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    # Reached with one meta tensor among CPU / CUDA ones too: name that mistake rather than the unbacked size.
    torch._check(
        dets.device == scores.device,
        lambda: f"nms: boxes and scores must be on the same device, got {dets.device} and {scores.device}",
    )
    torch._check(dets.dim() == 2, lambda: f"nms: boxes must be Tensor[N, 4], got {dets.dim()} dimensions")
    torch._check(dets.size(1) == 4, lambda: f"nms: boxes must be Tensor[N, 4], got shape {list(dets.shape)}")
    torch._check(scores.dim() == 1, lambda: f"nms: scores must be Tensor[N], got shape {list(scores.shape)}")
    torch._check(scores.size(0) == dets.size(0), lambda: "nms: scores must have one score per box")
    # How many boxes survive depends on their values: an unbacked size, bounded by the input's.
    kept = torch.library.get_ctx().new_dynamic_size()
    torch._check(kept <= dets.size(0))
    return dets.new_empty((kept,), dtype=torch.int64)


@torch.library.register_fake("detlib::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(
        input.device == rois.device,
        lambda: f"roi_align: input and rois must be on the same device, got {input.device} and {rois.device}",
    )
    torch._check(input.dim() == 4, lambda: f"roi_align: input must be Tensor[N, C, H, W], got {input.dim()} dims")
    torch._check(rois.dim() == 2, lambda: f"roi_align: rois must be Tensor[K, 5], got {rois.dim()} dims")
    torch._check(rois.size(1) == 5, lambda: f"roi_align: rois must be Tensor[K, 5], got shape {list(rois.shape)}")
    torch._check(input.dtype == rois.dtype, lambda: "roi_align: input and rois must have the same dtype")
    return input.new_empty((rois.size(0), input.size(1), pooled_height, pooled_width))


@torch.library.register_fake("detlib::_roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    torch._check(grad.dim() == 4, lambda: f"roi_align backward: grad must be 4-d, got shape {list(grad.shape)}")
    torch._check(rois.dim() == 2 and rois.size(1) == 5, lambda: "roi_align backward: rois must be Tensor[K, 5]")
    # The CPU kernel returns grad_input in grad's layout, the CUDA kernel NCHW.
    layout = _cpu_layout(grad) if grad.device.type == "cpu" else torch.contiguous_format
    return torch.empty(
        (batch_size, channels, height, width), dtype=grad.dtype, device=grad.device, memory_format=layout
    )


def _roi_align_setup_context(ctx, inputs, output) -> None:
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.geometry = (spatial_scale, pooled_height, pooled_width, *input.shape, sampling_ratio, aligned)
    # On the CPU the kernels work in the input's layout (NCHW or channels_last) and the backward kernel returns
    # grad_input in grad's: hand it grad in the input's layout, a copy of the small pooled gradient at most.
    ctx.layout = _cpu_layout(input) if input.device.type == "cpu" else None


def _roi_align_backward(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    if ctx.layout is not None:
        grad_output = grad_output.to(memory_format=ctx.layout)
    grad_input = torch.ops.detlib._roi_align_backward(grad_output, rois, *ctx.geometry)
    # Gradients w.r.t. input only: the rois' coordinates, sizes and flags get none (as torchvision).
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd("detlib::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context)


def _deform_conv_output_size(input, weight, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w):
    out_h = (input.size(2) + 2 * pad_h - (dilation_h * (weight.size(2) - 1) + 1)) // stride_h + 1
    out_w = (input.size(3) + 2 * pad_w - (dilation_w * (weight.size(3) - 1) + 1)) // stride_w + 1
    return out_h, out_w


@torch.library.register_fake("detlib::deform_conv2d")
def _deform_conv2d_fake(
    input,
    weight,
    offset,
    mask,
    bias,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dilation_h,
    dilation_w,
    groups,
    offset_groups,
    use_mask,
):
    for name, t in (("weight", weight), ("offset", offset), ("mask", mask), ("bias", bias)):
        torch._check(
            t.device == input.device and t.dtype == input.dtype,
            lambda name=name, t=t: (
                f"deform_conv2d: {name} must have input's device and dtype, got {t.device} {t.dtype}"
            ),
        )
    torch._check(input.dim() == 4 and weight.dim() == 4 and offset.dim() == 4, lambda: "deform_conv2d: 4-d tensors")
    out_h, out_w = _deform_conv_output_size(input, weight, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    torch._check(
        offset.size(1) == 2 * offset_groups * weight.size(2) * weight.size(3),
        lambda: f"deform_conv2d: offset must have 2 * offset_groups * kH * kW channels, got {list(offset.shape)}",
    )
    return input.new_empty((input.size(0), weight.size(0), out_h, out_w))


@torch.library.register_fake("detlib::_deform_conv2d_backward")
def _deform_conv2d_backward_fake(grad, input, weight, offset, mask, bias, *scalars):
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format) for t in (input, weight, offset, mask, bias)
    )


def _deform_conv2d_setup_context(ctx, inputs, output) -> None:
    input, weight, offset, mask, bias, *scalars = inputs
    ctx.save_for_backward(input, weight, offset, mask, bias)
    ctx.scalars = scalars


def _deform_conv2d_backward(ctx, grad_output):
    input, weight, offset, mask, bias = ctx.saved_tensors
    grad_input, grad_weight, grad_offset, grad_mask, grad_bias = torch.ops.detlib._deform_conv2d_backward(
        grad_output, input, weight, offset, mask, bias, *ctx.scalars
    )
    use_mask = ctx.scalars[-1]
    # No gradients for the geometry scalars; the mask has none when it is not used (as torchvision).
    return grad_input, grad_weight, grad_offset, grad_mask if use_mask else None, grad_bias, *([None] * 9)


torch.library.register_autograd(
    "detlib::deform_conv2d", _deform_conv2d_backward, setup_context=_deform_conv2d_setup_context
)
