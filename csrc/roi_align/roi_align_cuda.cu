// ROIAlign forward and backward on CUDA, with torchvision.ops.roi_align semantics.
//
// One thread per pooled output element (roi, channel, bin row, bin column). The bin is averaged
// over a grid of bilinearly interpolated samples; the backward pass scatters each output gradient
// back to the four pixels of every sample with atomic adds. Arithmetic is done in the accumulate
// type (float for half/bfloat16), and half/bfloat16 input gradients are accumulated in a float
// buffer, so many small contributions to one pixel do not lose precision.

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "../detlib_ops.h"

namespace detlib {
namespace {

constexpr int kThreads = 256;

// Bilinear interpolation is separable: a sample at (y, x) reads rows {low, high} of one axis tap
// and columns {low, high} of another, weighting pixel (r, c) by w_r * w_c. As in torchvision, a
// sample more than one pixel outside the map contributes nothing, and one within a pixel of the
// border is clamped onto it.
template <typename T>
struct AxisTap {
  bool inside;
  int low, high;
  T w_low, w_high;
};

template <typename T>
__device__ __forceinline__ AxisTap<T> axis_tap(T coord, int size) {
  AxisTap<T> tap{false, 0, 0, T(0), T(0)};
  if (coord < T(-1) || coord > T(size)) {
    return tap;
  }
  tap.inside = true;
  coord = max(coord, T(0));
  tap.low = static_cast<int>(coord);
  if (tap.low >= size - 1) {
    tap.low = tap.high = size - 1;
    coord = T(tap.low);
  } else {
    tap.high = tap.low + 1;
  }
  tap.w_high = coord - T(tap.low);
  tap.w_low = T(1) - tap.w_high;
  return tap;
}

// Geometry of one roi in feature-map coordinates: where its bins start, their size, and the
// sampling grid per bin (sampling_ratio, or adaptive: ceil(roi size / pooled size)).
template <typename T>
struct RoiGeometry {
  int batch;
  T y0, x0, bin_h, bin_w;
  int grid_h, grid_w;
  T count;  // number of samples averaged per bin, at least 1
};

template <typename scalar_t, typename T>
__device__ __forceinline__ RoiGeometry<T> roi_geometry(
    const scalar_t* roi, T spatial_scale, int pooled_height, int pooled_width, int sampling_ratio,
    bool aligned) {
  RoiGeometry<T> g;
  g.batch = static_cast<int>(roi[0]);
  // aligned=True shifts by half a pixel so that pixel centers sit at integer + 0.5 (ROIAlignV2).
  const T offset = aligned ? T(0.5) : T(0);
  g.x0 = static_cast<T>(roi[1]) * spatial_scale - offset;
  g.y0 = static_cast<T>(roi[2]) * spatial_scale - offset;
  T roi_w = static_cast<T>(roi[3]) * spatial_scale - offset - g.x0;
  T roi_h = static_cast<T>(roi[4]) * spatial_scale - offset - g.y0;
  if (!aligned) {
    // The original ROIAlign forces rois to be at least one pixel wide.
    roi_w = max(roi_w, T(1));
    roi_h = max(roi_h, T(1));
  }
  g.bin_h = roi_h / static_cast<T>(pooled_height);
  g.bin_w = roi_w / static_cast<T>(pooled_width);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_h / static_cast<T>(pooled_height)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_w / static_cast<T>(pooled_width)));
  g.count = static_cast<T>(max(g.grid_h * g.grid_w, 1));
  return g;
}

template <typename scalar_t, typename index_t>
__global__ void roi_align_forward_kernel(
    const scalar_t* __restrict__ input,  // [N, C, H, W]
    const scalar_t* __restrict__ rois,  // [K, 5]
    index_t total,  // K * C * PH * PW
    int channels, int height, int width, int pooled_height, int pooled_width,
    at::acc_type<scalar_t, true> spatial_scale, int sampling_ratio, bool aligned,
    scalar_t* __restrict__ output) {  // [K, C, PH, PW]
  using T = at::acc_type<scalar_t, true>;
  for (index_t index = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const int pw = static_cast<int>(index % pooled_width);
    const int ph = static_cast<int>((index / pooled_width) % pooled_height);
    const int c = static_cast<int>((index / pooled_width / pooled_height) % channels);
    const index_t k = index / pooled_width / pooled_height / channels;

    const RoiGeometry<T> g =
        roi_geometry(rois + k * 5, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
    const scalar_t* plane =
        input + (static_cast<index_t>(g.batch) * channels + c) * static_cast<index_t>(height) * width;

    T sum = 0;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<T> ty = axis_tap(
          g.y0 + ph * g.bin_h + (iy + T(0.5)) * g.bin_h / static_cast<T>(g.grid_h), height);
      if (!ty.inside) {
        continue;
      }
      const scalar_t* row_low = plane + ty.low * width;
      const scalar_t* row_high = plane + ty.high * width;
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<T> tx = axis_tap(
            g.x0 + pw * g.bin_w + (ix + T(0.5)) * g.bin_w / static_cast<T>(g.grid_w), width);
        if (!tx.inside) {
          continue;
        }
        const auto along_x = [&tx](const scalar_t* row) {
          return tx.w_low * static_cast<T>(row[tx.low]) + tx.w_high * static_cast<T>(row[tx.high]);
        };
        sum += ty.w_low * along_x(row_low) + ty.w_high * along_x(row_high);
      }
    }
    output[index] = static_cast<scalar_t>(sum / g.count);
  }
}

// grad_input is float for half/bfloat16 inputs (accum_t), else the input type.
template <typename scalar_t, typename accum_t, typename index_t>
__global__ void roi_align_backward_kernel(
    const scalar_t* __restrict__ grad_output,  // [K, C, PH, PW]
    const scalar_t* __restrict__ rois,  // [K, 5]
    index_t total,
    int channels, int height, int width, int pooled_height, int pooled_width,
    at::acc_type<scalar_t, true> spatial_scale, int sampling_ratio, bool aligned,
    accum_t* __restrict__ grad_input) {  // [N, C, H, W]
  using T = at::acc_type<scalar_t, true>;
  for (index_t index = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const int pw = static_cast<int>(index % pooled_width);
    const int ph = static_cast<int>((index / pooled_width) % pooled_height);
    const int c = static_cast<int>((index / pooled_width / pooled_height) % channels);
    const index_t k = index / pooled_width / pooled_height / channels;

    const RoiGeometry<T> g =
        roi_geometry(rois + k * 5, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
    accum_t* plane =
        grad_input + (static_cast<index_t>(g.batch) * channels + c) * static_cast<index_t>(height) * width;
    const T grad = static_cast<T>(grad_output[index]) / g.count;

    for (int iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<T> ty = axis_tap(
          g.y0 + ph * g.bin_h + (iy + T(0.5)) * g.bin_h / static_cast<T>(g.grid_h), height);
      if (!ty.inside) {
        continue;
      }
      accum_t* row_low = plane + ty.low * width;
      accum_t* row_high = plane + ty.high * width;
      const T grad_low = grad * ty.w_low;
      const T grad_high = grad * ty.w_high;
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<T> tx = axis_tap(
            g.x0 + pw * g.bin_w + (ix + T(0.5)) * g.bin_w / static_cast<T>(g.grid_w), width);
        if (!tx.inside) {
          continue;
        }
        atomicAdd(row_low + tx.low, static_cast<accum_t>(grad_low * tx.w_low));
        atomicAdd(row_low + tx.high, static_cast<accum_t>(grad_low * tx.w_high));
        atomicAdd(row_high + tx.low, static_cast<accum_t>(grad_high * tx.w_low));
        atomicAdd(row_high + tx.high, static_cast<accum_t>(grad_high * tx.w_high));
      }
    }
  }
}

int64_t grid_size(int64_t total) {
  return std::min<int64_t>((total + kThreads - 1) / kThreads, std::numeric_limits<int32_t>::max());
}

bool fits_int32(int64_t a, int64_t b) {
  return std::max(a, b) <= std::numeric_limits<int32_t>::max();
}

}  // namespace

at::Tensor roi_align_forward_cuda(
    const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
    int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const int64_t num_rois = rois_c.size(0);
  const int64_t channels = input_c.size(1);
  const int64_t height = input_c.size(2);
  const int64_t width = input_c.size(3);
  at::Tensor output = at::empty({num_rois, channels, pooled_height, pooled_width}, input_c.options());
  const int64_t total = output.numel();
  if (total == 0 || input_c.numel() == 0) {
    return output.zero_();
  }

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input_c.scalar_type(), "roi_align_forward_cuda", [&] {
        using T = at::acc_type<scalar_t, true>;
        auto launch = [&](auto index_zero) {
          using index_t = decltype(index_zero);
          roi_align_forward_kernel<scalar_t, index_t><<<grid_size(total), kThreads, 0, stream>>>(
              input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), static_cast<index_t>(total),
              channels, height, width, pooled_height, pooled_width, static_cast<T>(spatial_scale),
              sampling_ratio, aligned, output.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (fits_int32(total, input_c.numel())) {
          launch(int32_t{0});
        } else {
          launch(int64_t{0});
        }
      });
  return output;
}

at::Tensor roi_align_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
    int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
    int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const bool reduced_precision =
      grad_c.scalar_type() == at::ScalarType::Half || grad_c.scalar_type() == at::ScalarType::BFloat16;
  at::Tensor grad_input = at::zeros(
      {batch_size, channels, height, width},
      grad_c.options().dtype(reduced_precision ? at::ScalarType::Float : grad_c.scalar_type()));
  const int64_t total = grad_c.numel();
  if (total == 0 || grad_input.numel() == 0) {
    return grad_input.to(grad_c.scalar_type());
  }

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, grad_c.scalar_type(), "roi_align_backward_cuda", [&] {
        using T = at::acc_type<scalar_t, true>;
        using accum_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        auto launch = [&](auto index_zero) {
          using index_t = decltype(index_zero);
          roi_align_backward_kernel<scalar_t, accum_t, index_t><<<grid_size(total), kThreads, 0, stream>>>(
              grad_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), static_cast<index_t>(total),
              channels, height, width, pooled_height, pooled_width, static_cast<T>(spatial_scale),
              sampling_ratio, aligned, grad_input.data_ptr<accum_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (fits_int32(total, grad_input.numel())) {
          launch(int32_t{0});
        } else {
          launch(int64_t{0});
        }
      });
  return grad_input.to(grad_c.scalar_type());
}

}  // namespace detlib
