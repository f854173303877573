// Kernels behind torch.ops.detlib.*. register_ops.cpp validates every input (shape, dtype, device) and makes it
// contiguous (in the memory format `layout` where the kernel takes one) before calling these, so the kernels
// assume well-formed contiguous tensors.
// Boxes are XYXY in absolute pixels; rois are [K, 5] rows of (batch index, x1, y1, x2, y2).
#pragma once

#include <ATen/ATen.h>

// Bumped whenever the interface of _C changes (2: ops registered as torch.ops.detlib.*; 3: deform_conv2d);
// detlib/layers/_extension.py does not use a `_C` built with another value (a stale build).
#define DETLIB_C_ABI_VERSION 3

namespace detlib {

// The scalar arguments of deform_conv2d, as torchvision's: offset_groups (deformable groups) share one set of
// offsets (and mask) per C / offset_groups input channels; without use_mask the mask tensor is not read.
struct DeformConvParams {
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, offset_groups;
  bool use_mask;
};

// Indices (int64) of the boxes kept by greedy NMS, by decreasing score. Scores are ordered by a
// stable descending sort and box j is dropped when IoU(i, j) > iou_threshold for a kept box i, so the
// result equals torchvision.ops.nms index for index.
at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);

// ROIAlign with torchvision.ops.roi_align semantics. input [N, C, H, W], rois [K, 5] of input's
// dtype -> [K, C, pooled_height, pooled_width]. aligned=true shifts sampling by -0.5 pixel. input is
// contiguous in `layout`, at::MemoryFormat::Contiguous (NCHW) or ChannelsLast (NHWC); the output is NCHW.
at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                 at::MemoryFormat layout);

// Gradient of roi_align_forward w.r.t. its input: grad [K, C, PH, PW] -> [batch_size, channels,
// height, width]. grad is contiguous in `layout` (Contiguous or ChannelsLast), and so is the result.
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned, at::MemoryFormat layout);

// Deformable convolution (v1; v2 with use_mask) with torchvision.ops.deform_conv2d semantics: input [N, C, H, W],
// weight [O, C / groups, kH, kW], offset [N, 2 * offset_groups * kH * kW, H_out, W_out] of (dy, dx) per tap,
// mask [N, offset_groups * kH * kW, H_out, W_out] (or [N, 0] without use_mask), bias [O] -> [N, O, H_out, W_out].
at::Tensor deform_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                     const at::Tensor& mask, const at::Tensor& bias, const DeformConvParams& params);

// Gradients of deform_conv2d_forward_cpu given grad [N, O, H_out, W_out]: (input, weight, offset, mask, bias),
// torchvision's order; the mask's is zero without use_mask.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, const DeformConvParams& params);

#ifdef WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                  bool aligned);

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                   int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned);

at::Tensor deform_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                      const at::Tensor& mask, const at::Tensor& bias, const DeformConvParams& params);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, const DeformConvParams& params);
#endif

}  // namespace detlib
