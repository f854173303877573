// Registers detlib's kernels as PyTorch operators, torch.ops.detlib.{nms, roi_align, _roi_align_backward,
// deform_conv2d, _deform_conv2d_backward}, with torchvision's schemas so that exporters can map them to ONNX
// NonMaxSuppression / RoiAlign / DeformConv. The
// CPU and CUDA kernels below check every argument once, then call the kernels of csrc/*/. Autograd and
// the fake (meta) kernels that torch.compile / torch.export trace with are registered in Python, in
// detlib/layers/operators.py, which this library names as its Python module.
// The Python module detlib._C itself only carries the build's metadata (see _extension.py).
#include <torch/extension.h>
#include <torch/library.h>

#include "detlib_ops.h"

#ifndef DETLIB_TORCH_VERSION
#error "setup.py defines DETLIB_TORCH_VERSION (the torch version this extension is built against)"
#endif
#ifndef DETLIB_CUDA_ARCHS
#define DETLIB_CUDA_ARCHS ""
#endif
#ifndef DETLIB_CUDA_VERSION
#define DETLIB_CUDA_VERSION ""
#endif

namespace detlib {
namespace {

std::string shape_of(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), a_name, " and ", b_name, " must be on the same device, got ", a.device(),
              " and ", b.device());
}

// CPU kernels are float32/float64; CUDA kernels add float16/bfloat16.
void check_kernel_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto dtype = t.scalar_type();
  const bool cpu_ok = dtype == at::kFloat || dtype == at::kDouble;
  const bool cuda_ok = cpu_ok || dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK(t.is_cuda() ? cuda_ok : cpu_ok, op, ": ", name, " has unsupported dtype ", dtype, " on ", t.device(),
              " (supported: float32, float64", t.is_cuda() ? ", float16, bfloat16)" : ")");
}

#ifndef WITH_CUDA
[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, op, ": got CUDA tensors but detlib._C was built without CUDA. Rebuild with "
              "`FORCE_CUDA=1 pip install -e .` on a machine with nvcc.");
}
#endif

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must be Tensor[N, 4] (x1, y1, x2, y2), got shape ",
              shape_of(boxes));
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "nms: scores must be Tensor[N] with one score per box, got shape ", shape_of(scores), " for ",
              boxes.size(0), " boxes");
  check_same_device(boxes, "nms: boxes", scores, "scores");
  TORCH_CHECK(boxes.scalar_type() == scores.scalar_type(), "nms: boxes and scores must have the same dtype, got ",
              boxes.scalar_type(), " and ", scores.scalar_type());
  check_kernel_dtype(boxes, "nms", "boxes");
  if (boxes.is_cuda()) {
#ifdef WITH_CUDA
    return nms_cuda(boxes.contiguous(), scores.contiguous(), iou_threshold);
#else
    no_cuda("nms");
#endif
  }
  return nms_cpu(boxes.contiguous(), scores.contiguous(), iou_threshold);
}

void check_roi_align_args(const at::Tensor& rois, int64_t pooled_height, int64_t pooled_width,
                          double spatial_scale) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5,
              "roi_align: rois must be Tensor[K, 5] (batch index, x1, y1, x2, y2), got shape ", shape_of(rois));
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, "roi_align: output size must be positive, got (", pooled_height,
              ", ", pooled_width, ")");
  TORCH_CHECK(spatial_scale > 0, "roi_align: spatial_scale must be positive, got ", spatial_scale);
}

// The CPU ROIAlign kernels read and write NCHW and channels_last (NHWC) maps in place, in the layout a tensor's
// strides suggest: detlib runs channels_last on the CPU (MODEL.MEMORY_FORMAT auto), and copying a whole FPN
// level to NCHW for every pooling would cost more time and memory than the pooling. The backward pass returns
// grad_input in grad's layout; operators.py hands it grad in the layout of the forward pass's input.
at::MemoryFormat cpu_layout(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                      : at::MemoryFormat::Contiguous;
}

at::Tensor roi_align_forward(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                             int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be a Tensor[N, C, H, W] feature map, got shape ",
              shape_of(input));
  check_roi_align_args(rois, pooled_height, pooled_width, spatial_scale);
  check_same_device(input, "roi_align: input", rois, "rois");
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(), "roi_align: input and rois must have the same dtype, got ",
              input.scalar_type(), " and ", rois.scalar_type());
  check_kernel_dtype(input, "roi_align", "input");
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return roi_align_forward_cuda(input.contiguous(), rois.contiguous(), spatial_scale, pooled_height, pooled_width,
                                  sampling_ratio, aligned);
#else
    no_cuda("roi_align");
#endif
  }
  const at::MemoryFormat layout = cpu_layout(input);
  return roi_align_forward_cpu(input.contiguous(layout), rois.contiguous(), spatial_scale, pooled_height, pooled_width,
                               sampling_ratio, aligned, layout);
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_args(rois, pooled_height, pooled_width, spatial_scale);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              "roi_align backward: grad must have shape [", rois.size(0), ", ", channels, ", ", pooled_height, ", ",
              pooled_width, "], got ", shape_of(grad));
  TORCH_CHECK(batch_size >= 0 && height >= 0 && width >= 0, "roi_align backward: negative input size");
  check_same_device(grad, "roi_align backward: grad", rois, "rois");
  TORCH_CHECK(grad.scalar_type() == rois.scalar_type(),
              "roi_align backward: grad and rois must have the same dtype, got ", grad.scalar_type(), " and ",
              rois.scalar_type());
  check_kernel_dtype(grad, "roi_align backward", "grad");
  if (grad.is_cuda()) {
#ifdef WITH_CUDA
    return roi_align_backward_cuda(grad.contiguous(), rois.contiguous(), spatial_scale, pooled_height, pooled_width,
                                   batch_size, channels, height, width, sampling_ratio, aligned);
#else
    no_cuda("roi_align backward");
#endif
  }
  const at::MemoryFormat layout = cpu_layout(grad);
  return roi_align_backward_cpu(grad.contiguous(layout), rois.contiguous(), spatial_scale, pooled_height,
                                pooled_width, batch_size, channels, height, width, sampling_ratio, aligned, layout);
}

std::string deform_conv_shapes(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                               const at::Tensor& mask, const at::Tensor& bias) {
  return "input " + shape_of(input) + ", weight " + shape_of(weight) + ", offset " + shape_of(offset) + ", mask " +
         shape_of(mask) + ", bias " + shape_of(bias);
}

// Checks deform_conv2d's tensors against each other and its scalars (as the Python layer does, for direct callers
// of torch.ops.detlib.deform_conv2d); returns the scalars. `op` names the caller in messages.
DeformConvParams check_deform_conv_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                        const at::Tensor& offset, const at::Tensor& mask, const at::Tensor& bias,
                                        int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                        int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t offset_groups,
                                        bool use_mask) {
  const std::string shapes = deform_conv_shapes(input, weight, offset, mask, bias);
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4 && offset.dim() == 4 && bias.dim() == 1, op,
              ": input, weight and offset must be 4-d and bias 1-d, got ", shapes);
  TORCH_CHECK(stride_h > 0 && stride_w > 0 && pad_h >= 0 && pad_w >= 0 && dilation_h > 0 && dilation_w > 0, op,
              ": need stride > 0, padding >= 0, dilation > 0, got stride (", stride_h, ", ", stride_w, "), padding (",
              pad_h, ", ", pad_w, "), dilation (", dilation_h, ", ", dilation_w, ")");
  TORCH_CHECK(groups > 0 && offset_groups > 0, op, ": groups and offset_groups must be positive, got ", groups, " and ",
              offset_groups);
  const int64_t channels = input.size(1), out_channels = weight.size(0), taps = weight.size(2) * weight.size(3);
  TORCH_CHECK(channels % groups == 0 && out_channels % groups == 0 && weight.size(1) == channels / groups, op,
              ": weight must be [O, C / groups, kH, kW] with O and C divisible by groups=", groups, ", got ", shapes);
  TORCH_CHECK(channels % offset_groups == 0, op, ": input channels must be divisible by offset_groups=", offset_groups,
              ", got ", shapes);
  const int64_t out_h = (input.size(2) + 2 * pad_h - (dilation_h * (weight.size(2) - 1) + 1)) / stride_h + 1;
  const int64_t out_w = (input.size(3) + 2 * pad_w - (dilation_w * (weight.size(3) - 1) + 1)) / stride_w + 1;
  TORCH_CHECK(out_h > 0 && out_w > 0, op, ": input too small for the kernel: output would be ", out_h, "x", out_w,
              ", got ", shapes);
  TORCH_CHECK(offset.size(0) == input.size(0) && offset.size(1) == 2 * offset_groups * taps &&
                  offset.size(2) == out_h && offset.size(3) == out_w,
              op, ": offset must be [", input.size(0), ", ", 2 * offset_groups * taps, ", ", out_h, ", ", out_w,
              "], got ", shapes);
  if (use_mask) {
    TORCH_CHECK(mask.dim() == 4 && mask.size(0) == input.size(0) && mask.size(1) == offset_groups * taps &&
                    mask.size(2) == out_h && mask.size(3) == out_w,
                op, ": mask must be [", input.size(0), ", ", offset_groups * taps, ", ", out_h, ", ", out_w, "], got ",
                shapes);
  }
  TORCH_CHECK(bias.size(0) == out_channels, op, ": bias must be [", out_channels, "], got ", shapes);
  TORCH_CHECK(input.size(2) * input.size(3) <= std::numeric_limits<int32_t>::max(), op,
              ": input planes of 2^31 or more pixels are not supported, got ", shapes);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{weight, "weight"},
                                {offset, "offset"},
                                {mask, "mask"},
                                {bias, "bias"}}) {
    check_same_device(input, "deform_conv2d: input", t, name);
    TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " must have input's dtype ",
                input.scalar_type(), ", got ", t.scalar_type());
  }
  check_kernel_dtype(input, op, "input");
  return {stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, offset_groups, use_mask};
}

at::Tensor deform_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                 const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w,
                                 int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups,
                                 int64_t offset_groups, bool use_mask) {
  const DeformConvParams params =
      check_deform_conv_args("deform_conv2d", input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                             dilation_h, dilation_w, groups, offset_groups, use_mask);
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return deform_conv2d_forward_cuda(input.contiguous(), weight.contiguous(), offset.contiguous(), mask.contiguous(),
                                      bias.contiguous(), params);
#else
    no_cuda("deform_conv2d");
#endif
  }
  return deform_conv2d_forward_cpu(input.contiguous(), weight.contiguous(), offset.contiguous(), mask.contiguous(),
                                   bias.contiguous(), params);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t offset_groups, bool use_mask) {
  const char* op = "deform_conv2d backward";
  const DeformConvParams params = check_deform_conv_args(op, input, weight, offset, mask, bias, stride_h, stride_w,
                                                         pad_h, pad_w, dilation_h, dilation_w, groups, offset_groups,
                                                         use_mask);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == input.size(0) && grad.size(1) == weight.size(0) &&
                  grad.size(2) == offset.size(2) && grad.size(3) == offset.size(3),
              op, ": grad must have the output's shape [", input.size(0), ", ", weight.size(0), ", ", offset.size(2),
              ", ", offset.size(3), "], got ", shape_of(grad));
  check_same_device(input, "deform_conv2d backward: input", grad, "grad");
  TORCH_CHECK(grad.scalar_type() == input.scalar_type(), op, ": grad must have input's dtype ", input.scalar_type(),
              ", got ", grad.scalar_type());
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return deform_conv2d_backward_cuda(grad.contiguous(), input.contiguous(), weight.contiguous(), offset.contiguous(),
                                       mask.contiguous(), bias.contiguous(), params);
#else
    no_cuda("deform_conv2d backward");
#endif
  }
  return deform_conv2d_backward_cpu(grad.contiguous(), input.contiguous(), weight.contiguous(), offset.contiguous(),
                                    mask.contiguous(), bias.contiguous(), params);
}

}  // namespace
}  // namespace detlib


// Schemas as torchvision's (torchvision::nms, torchvision::roi_align, torchvision::_roi_align_backward,
// torchvision::deform_conv2d, torchvision::_deform_conv2d_backward),
// SymInt sizes included, so the Python layer can fall back to torchvision by swapping the namespace.
TORCH_LIBRARY(detlib, m) {
  m.set_python_module("detlib.layers.operators");
  m.def("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor");
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned) -> Tensor");
  m.def(
      "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
      "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
      "SymInt offset_groups, bool use_mask) -> Tensor");
  m.def(
      "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
      "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
      "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// One checked entry point per op serves both backends: it validates, then picks the CPU or CUDA kernel
// (or explains that CUDA was not built).
TORCH_LIBRARY_IMPL(detlib, CPU, m) {
  m.impl("nms", TORCH_FN(detlib::nms));
  m.impl("roi_align", TORCH_FN(detlib::roi_align_forward));
  m.impl("_roi_align_backward", TORCH_FN(detlib::roi_align_backward));
  m.impl("deform_conv2d", TORCH_FN(detlib::deform_conv2d_forward));
  m.impl("_deform_conv2d_backward", TORCH_FN(detlib::deform_conv2d_backward));
}

TORCH_LIBRARY_IMPL(detlib, CUDA, m) {
  m.impl("nms", TORCH_FN(detlib::nms));
  m.impl("roi_align", TORCH_FN(detlib::roi_align_forward));
  m.impl("_roi_align_backward", TORCH_FN(detlib::roi_align_backward));
  m.impl("deform_conv2d", TORCH_FN(detlib::deform_conv2d_forward));
  m.impl("_deform_conv2d_backward", TORCH_FN(detlib::deform_conv2d_backward));
}

namespace {

std::string compiler_version() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

}  // namespace

// Importing detlib._C loads the operators above; its attributes describe the build, so that a stale or
// mismatched build is detected (detlib/layers/_extension.py) and reported (python -m detlib.collect_env).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "detlib's compiled ops (torch.ops.detlib.*) and the metadata of their build";
  m.attr("ABI_VERSION") = DETLIB_C_ABI_VERSION;
  m.attr("TORCH_VERSION") = DETLIB_TORCH_VERSION;
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
  m.attr("CUDA_VERSION") = DETLIB_CUDA_VERSION;
  m.attr("CUDA_ARCHS") = DETLIB_CUDA_ARCHS;
  m.attr("COMPILER") = compiler_version();
  m.attr("CXX11_ABI") = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
}
