"""
ONNX for detlib's operators, in standard ONNX operators (so ONNX Runtime needs no custom library):
torch.ops.detlib.nms -> NonMaxSuppression, torch.ops.detlib.roi_align -> RoiAlign (opset 16 for its
coordinate_transformation_mode), torch.ops.detlib.deform_conv2d -> DeformConv (opset 19).
"""

import torch
from onnxscript import opset19 as op

__all__ = ["ONNX_OPSET", "custom_translation_table"]

ONNX_OPSET = 19


def nms_to_onnx(dets, scores, iou_threshold: float):
    """Indices of the kept boxes by decreasing score; NonMaxSuppression over one batch and one class."""
    boxes = op.Unsqueeze(dets, op.Constant(value_ints=[0]))  # 1 x N x 4; IoU ignores the corners' x/y order
    class_scores = op.Unsqueeze(scores, op.Constant(value_ints=[0, 1]))  # 1 x 1 x N
    keep_all = op.Shape(dets, start=0, end=1)  # at most N boxes per class: no limit
    threshold = op.Constant(value_float=float(iou_threshold))
    selected = op.NonMaxSuppression(boxes, class_scores, keep_all, threshold)  # K x (batch, class, box)
    return op.Reshape(op.Slice(selected, [2], [3], [1]), op.Constant(value_ints=[-1]))


def roi_align_to_onnx(
    input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
):
    """RoiAlign (average mode); aligned=True is ONNX's half_pixel, False its legacy output_half_pixel."""
    batch_indices = op.Cast(op.Reshape(op.Slice(rois, [0], [1], [1]), op.Constant(value_ints=[-1])), to=7)
    boxes = op.Slice(rois, [1], [5], [1])
    return op.RoiAlign(
        input,
        boxes,
        batch_indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=int(pooled_height),
        output_width=int(pooled_width),
        sampling_ratio=max(int(sampling_ratio), 0),  # both: <= 0 adapts to the box size
        spatial_scale=float(spatial_scale),
    )


def deform_conv2d_to_onnx(
    input,
    weight,
    offset,
    mask,
    bias,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    groups: int,
    offset_groups: int,
    use_mask: bool,
):
    """DeformConv: the same (dy, dx) offset layout and mask as torchvision's; its kernel shape comes from weight."""
    geometry = dict(
        dilations=[int(dilation_h), int(dilation_w)],
        group=int(groups),
        offset_group=int(offset_groups),
        pads=[int(pad_h), int(pad_w), int(pad_h), int(pad_w)],
        strides=[int(stride_h), int(stride_w)],
    )
    if use_mask:
        return op.DeformConv(input, weight, offset, bias, mask, **geometry)
    return op.DeformConv(input, weight, offset, bias, **geometry)  # without the (empty) mask: v1


def custom_translation_table():
    """The `custom_translation_table` of torch.onnx.export for detlib's operators."""
    return {
        torch.ops.detlib.nms.default: nms_to_onnx,
        torch.ops.detlib.roi_align.default: roi_align_to_onnx,
        torch.ops.detlib.deform_conv2d.default: deform_conv2d_to_onnx,
    }
