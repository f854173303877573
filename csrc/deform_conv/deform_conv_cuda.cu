// Deformable convolution forward and backward on CUDA, torchvision.ops.deform_conv2d's math, in the structure of
// the CPU kernels (deform_conv_cpu.cpp): per image, a [C * K, P] column matrix of bilinear samples (one thread per
// element), then one batched GEMM over the groups. Backward: the columns' gradient (weight^T x grad) is scattered
// to the input with atomic adds, reduced over each offset group's channels for the offset and mask gradients (one
// thread per sample), and the recomputed columns give the weight's gradient by GEMM. Arithmetic is in the
// accumulate type (float for half / bfloat16), and half / bfloat16 input gradients accumulate in a float buffer.

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>


#include "../detlib_ops.h"

namespace detlib {
namespace {

constexpr int kThreads = 256;

int64_t grid_size(int64_t total) { return (total + kThreads - 1) / kThreads; }

// Sizes the kernels index with; int64 throughout: the column matrix alone can pass 2^31 elements.
struct Geometry {
  int64_t channels, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
      offset_groups, out_h, out_w;
  bool use_mask;
  __host__ __device__ int64_t taps() const { return kernel_h * kernel_w; }
  __host__ __device__ int64_t pixels() const { return out_h * out_w; }
  __host__ __device__ int64_t channels_per_offset_group() const { return channels / offset_groups; }
};

// Where tap `tap` of output pixel `pixel` samples, for offset group `group` of one image: the four corners
// (row-major: (y0, x0), (y0, x1), (y1, x0), (y1, x1)), whether each is inside the map, their bilinear weights
// (zero for a corner outside, all zero when the sample is at or beyond one pixel outside the map) and the mask.
template <typename T>
struct Sample {
  int64_t index[4];
  bool inside[4];
  T weight[4];
  T frac_h, frac_w, mask;
};

template <typename scalar_t, typename T>
__device__ __forceinline__ Sample<T> sample_at(const scalar_t* offset, const scalar_t* mask, const Geometry& g,
                                               int64_t group, int64_t tap, int64_t pixel) {
  const int64_t taps = g.taps(), pixels = g.pixels();
  const int64_t oy = pixel / g.out_w, ox = pixel % g.out_w, ki = tap / g.kernel_w, kj = tap % g.kernel_w;
  const scalar_t* dy = offset + (group * 2 * taps + 2 * tap) * pixels;
  const T y = static_cast<T>(oy * g.stride_h - g.pad_h + ki * g.dilation_h) + static_cast<T>(dy[pixel]);
  const T x = static_cast<T>(ox * g.stride_w - g.pad_w + kj * g.dilation_w) + static_cast<T>(dy[pixels + pixel]);
  Sample<T> s;
  s.mask = g.use_mask ? static_cast<T>(mask[(group * taps + tap) * pixels + pixel]) : T(1);
  const bool in_range = y > T(-1) && y < T(g.height) && x > T(-1) && x < T(g.width);
  const bool near = y > T(-2) && y < T(g.height + 1) && x > T(-2) && x < T(g.width + 1);
  const int64_t y0 = near ? static_cast<int64_t>(floor(y)) : -2;
  const int64_t x0 = near ? static_cast<int64_t>(floor(x)) : -2;
  s.frac_h = near ? y - static_cast<T>(y0) : T(0);
  s.frac_w = near ? x - static_cast<T>(x0) : T(0);
  const T hh = T(1) - s.frac_h, hw = T(1) - s.frac_w;
  const T corner_weight[4] = {hh * hw, hh * s.frac_w, s.frac_h * hw, s.frac_h * s.frac_w};
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t cy = y0 + c / 2, cx = x0 + c % 2;
    s.inside[c] = cy >= 0 && cy < g.height && cx >= 0 && cx < g.width;
    s.index[c] = s.inside[c] ? cy * g.width + cx : 0;
    s.weight[c] = s.inside[c] && in_range ? corner_weight[c] : T(0);
  }
  return s;
}

template <typename scalar_t, typename T>
__device__ __forceinline__ T interpolate(const scalar_t* plane, const Sample<T>& s) {
  T value = T(0);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    value += s.inside[c] ? s.weight[c] * static_cast<T>(plane[s.index[c]]) : T(0);
  }
  return value;
}

// columns [C * K, P]: row c * K + k holds channel c sampled at tap k, times the mask.
template <typename scalar_t>
__global__ void fill_columns_kernel(const scalar_t* image, const scalar_t* offset, const scalar_t* mask, Geometry g,
                                    scalar_t* columns) {
  using T = at::acc_type<scalar_t, true>;
  const int64_t total = g.channels * g.taps() * g.pixels();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t pixel = i % g.pixels(), row = i / g.pixels();
    const int64_t channel = row / g.taps(), tap = row % g.taps();
    const Sample<T> s = sample_at<scalar_t, T>(offset, mask, g, channel / g.channels_per_offset_group(), tap, pixel);
    columns[i] = static_cast<scalar_t>(s.mask * interpolate(image + channel * g.height * g.width, s));
  }
}

// grad_image [C, H, W] += the columns' gradient carried back through the sampling.
template <typename scalar_t, typename accum_t>
__global__ void scatter_columns_kernel(const scalar_t* grad_columns, const scalar_t* offset, const scalar_t* mask,
                                       Geometry g, accum_t* grad_image) {
  using T = at::acc_type<scalar_t, true>;
  const int64_t total = g.channels * g.taps() * g.pixels();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t pixel = i % g.pixels(), row = i / g.pixels();
    const int64_t channel = row / g.taps(), tap = row % g.taps();
    const Sample<T> s = sample_at<scalar_t, T>(offset, mask, g, channel / g.channels_per_offset_group(), tap, pixel);
    const T grad = static_cast<T>(grad_columns[i]);
    accum_t* plane = grad_image + channel * g.height * g.width;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (s.weight[c] != T(0)) {
        gpuAtomicAdd(plane + s.index[c], static_cast<accum_t>(s.mask * s.weight[c] * grad));
      }
    }
  }
}

// Gradients w.r.t. one image's offsets [2 * G * K, P] and mask [G * K, P]: one thread per sample sums, over the
// channels of its offset group, the column gradient times d(sample)/d(dy, dx) (and the sampled value for the
// mask). As torchvision, d/d(dy, dx) is taken from the corners inside the map alone.
template <typename scalar_t>
__global__ void offset_and_mask_gradients_kernel(const scalar_t* image, const scalar_t* grad_columns,
                                                 const scalar_t* offset, const scalar_t* mask, Geometry g,
                                                 scalar_t* grad_offset, scalar_t* grad_mask) {
  using T = at::acc_type<scalar_t, true>;
  const int64_t taps = g.taps(), pixels = g.pixels(), per_group = g.channels_per_offset_group();
  const int64_t total = g.offset_groups * taps * pixels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t pixel = i % pixels, row = i / pixels, group = row / taps, tap = row % taps;
    const Sample<T> s = sample_at<scalar_t, T>(offset, mask, g, group, tap, pixel);
    T sum_dy = T(0), sum_dx = T(0), sum_mask = T(0);
    for (int64_t channel = group * per_group; channel < (group + 1) * per_group; ++channel) {
      const scalar_t* plane = image + channel * g.height * g.width;
      const T grad = static_cast<T>(grad_columns[(channel * taps + tap) * pixels + pixel]);
      T v[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        v[c] = s.inside[c] ? static_cast<T>(plane[s.index[c]]) : T(0);
      }
      const T d_dy = s.frac_w * (v[3] - v[1]) + (T(1) - s.frac_w) * (v[2] - v[0]);
      const T d_dx = s.frac_h * (v[3] - v[2]) + (T(1) - s.frac_h) * (v[1] - v[0]);
      sum_dy += s.mask * d_dy * grad;
      sum_dx += s.mask * d_dx * grad;
      if (g.use_mask) {
        sum_mask += grad * interpolate(plane, s);
      }
    }
    grad_offset[(group * 2 * taps + 2 * tap) * pixels + pixel] = static_cast<scalar_t>(sum_dy);
    grad_offset[(group * 2 * taps + 2 * tap + 1) * pixels + pixel] = static_cast<scalar_t>(sum_dx);
    if (g.use_mask) {
      grad_mask[i] = static_cast<scalar_t>(sum_mask);
    }
  }
}

Geometry make_geometry(const at::Tensor& input, const at::Tensor& weight, const DeformConvParams& p) {
  const int64_t out_h = (input.size(2) + 2 * p.pad_h - (p.dilation_h * (weight.size(2) - 1) + 1)) / p.stride_h + 1;
  const int64_t out_w = (input.size(3) + 2 * p.pad_w - (p.dilation_w * (weight.size(3) - 1) + 1)) / p.stride_w + 1;
  return {input.size(1), input.size(2), input.size(3), weight.size(2), weight.size(3), p.stride_h, p.stride_w,
          p.pad_h,       p.pad_w,       p.dilation_h,  p.dilation_w,   p.offset_groups, out_h,          out_w,
          p.use_mask};
}

// Enough blocks to fill the GPU; the kernels stride over the rest.
unsigned int blocks_for(int64_t total) {
  return static_cast<unsigned int>(std::min<int64_t>(grid_size(total), 65535LL * 8));
}

at::Tensor per_group(const at::Tensor& t, int64_t groups) { return t.reshape({groups, t.size(0) / groups, -1}); }

template <typename scalar_t>
const scalar_t* mask_of(const at::Tensor& mask, int64_t n, const Geometry& g) {
  return g.use_mask ? mask[n].data_ptr<scalar_t>() : nullptr;
}

}  // namespace

at::Tensor deform_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                      const at::Tensor& mask, const at::Tensor& bias, const DeformConvParams& params) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Geometry g = make_geometry(input, weight, params);
  const int64_t batch = input.size(0), out_channels = weight.size(0);
  at::Tensor output = at::empty({batch, out_channels, g.out_h, g.out_w}, input.options());
  if (batch == 0) {
    return output;
  }
  const at::Tensor weight_groups = per_group(weight, params.groups);
  at::Tensor columns = at::empty({g.channels * g.taps(), g.pixels()}, input.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(), "deform_conv2d_forward_cuda", [&] {
        for (int64_t n = 0; n < batch; ++n) {
          fill_columns_kernel<scalar_t><<<blocks_for(columns.numel()), kThreads, 0, stream>>>(
              input[n].data_ptr<scalar_t>(), offset[n].data_ptr<scalar_t>(), mask_of<scalar_t>(mask, n, g), g,
              columns.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          at::Tensor out = output[n].view({params.groups, out_channels / params.groups, g.pixels()});
          at::bmm_out(out, weight_groups, per_group(columns, params.groups));
        }
      });
  output.add_(bias.view({1, out_channels, 1, 1}));
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, const DeformConvParams& params) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const Geometry g = make_geometry(input, weight, params);
  const int64_t batch = input.size(0), out_channels = weight.size(0);
  const bool reduced_precision =
      input.scalar_type() == at::ScalarType::Half || input.scalar_type() == at::ScalarType::BFloat16;
  at::Tensor grad_input_accum =
      at::zeros_like(input, input.options().dtype(reduced_precision ? at::ScalarType::Float : input.scalar_type()));
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_mask = at::zeros_like(mask);
  at::Tensor grad_weight = at::zeros_like(weight);
  at::Tensor grad_bias = grad.sum({0, 2, 3}).to(bias.scalar_type());
  if (batch == 0) {
    return {grad_input_accum.to(input.scalar_type()), grad_weight, grad_offset, grad_mask, grad_bias};
  }
  const at::Tensor weight_groups = per_group(weight, params.groups);
  at::Tensor grad_weight_groups = per_group(grad_weight, params.groups);  // a view of grad_weight
  at::Tensor columns = at::empty({g.channels * g.taps(), g.pixels()}, input.options());
  at::Tensor grad_columns = at::empty_like(columns);
  at::Tensor grad_columns_groups = per_group(grad_columns, params.groups);  // views of the column matrices
  const at::Tensor columns_groups = per_group(columns, params.groups);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
        using accum_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        for (int64_t n = 0; n < batch; ++n) {
          const at::Tensor grad_n = grad[n].view({params.groups, out_channels / params.groups, g.pixels()});
          at::bmm_out(grad_columns_groups, weight_groups.transpose(1, 2), grad_n);
          const scalar_t* image = input[n].data_ptr<scalar_t>();
          const scalar_t* offset_n = offset[n].data_ptr<scalar_t>();
          const scalar_t* mask_n = mask_of<scalar_t>(mask, n, g);
          scatter_columns_kernel<scalar_t, accum_t><<<blocks_for(columns.numel()), kThreads, 0, stream>>>(
              grad_columns.data_ptr<scalar_t>(), offset_n, mask_n, g, grad_input_accum[n].data_ptr<accum_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          const int64_t samples = g.offset_groups * g.taps() * g.pixels();
          offset_and_mask_gradients_kernel<scalar_t><<<blocks_for(samples), kThreads, 0, stream>>>(
              image, grad_columns.data_ptr<scalar_t>(), offset_n, mask_n, g, grad_offset[n].data_ptr<scalar_t>(),
              g.use_mask ? grad_mask[n].data_ptr<scalar_t>() : nullptr);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          fill_columns_kernel<scalar_t><<<blocks_for(columns.numel()), kThreads, 0, stream>>>(
              image, offset_n, mask_n, g, columns.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          grad_weight_groups.baddbmm_(grad_n, columns_groups.transpose(1, 2));
        }
      });
  return {grad_input_accum.to(input.scalar_type()), grad_weight, grad_offset, grad_mask, grad_bias};
}

}  // namespace detlib
