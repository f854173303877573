// Registers detlib's kernels as PyTorch operators, torch.ops.detlib.{nms, roi_align, _roi_align_backward},
// with torchvision's schemas so that exporters can map them to ONNX NonMaxSuppression / RoiAlign. The
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

}  // namespace
}  // namespace detlib


// Schemas as torchvision's (torchvision::nms, torchvision::roi_align, torchvision::_roi_align_backward),
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
}

// One checked entry point per op serves both backends: it validates, then picks the CPU or CUDA kernel
// (or explains that CUDA was not built).
TORCH_LIBRARY_IMPL(detlib, CPU, m) {
  m.impl("nms", TORCH_FN(detlib::nms));
  m.impl("roi_align", TORCH_FN(detlib::roi_align_forward));
  m.impl("_roi_align_backward", TORCH_FN(detlib::roi_align_backward));
}

TORCH_LIBRARY_IMPL(detlib, CUDA, m) {
  m.impl("nms", TORCH_FN(detlib::nms));
  m.impl("roi_align", TORCH_FN(detlib::roi_align_forward));
  m.impl("_roi_align_backward", TORCH_FN(detlib::roi_align_backward));
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
