// Deformable convolution on the CPU, torchvision.ops.deform_conv2d's math: for each image, every input channel
// is sampled (bilinearly, zero outside the map) at the K = kH * kW taps of each output pixel, displaced by that
// pixel's offsets and scaled by its mask, into a [C * K, P] column matrix (P output pixels); one GEMM per group
// with the weight then gives the output. The backward pass runs the same sampling in reverse.
//
// Why it is faster than torchvision's CPU kernel: the sampling geometry (4 corner indices and weights) of a tap
// depends on the offset group, not on the channel, so it is computed once per (offset group, tap, pixel) into a
// table, and every channel of the group reads it while it is in the cache; the loops run under at::parallel_for.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "detlib_ops.h"

namespace detlib {
namespace {

// Where one tap of one output pixel samples a plane of the input: the four corners' offsets in the plane (0
// where a corner is outside it, so the loops need no branch), their bilinear weights in the forward pass (0
// for a corner outside the map, all 0 when the sample is), whether each corner is inside (for the gradient
// w.r.t. the position, which torchvision takes from the corners alone), the fractional position and the mask.
template <typename scalar_t>
struct Sample {
  int32_t index[4];  // register_ops.cpp checks that a plane has fewer than 2^31 elements
  scalar_t weight[4];
  scalar_t inside[4];
  scalar_t frac_h, frac_w, mask;
};

struct Geometry {
  int64_t channels, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
      groups, offset_groups, out_h, out_w;
  bool use_mask;
  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t pixels() const { return out_h * out_w; }
  int64_t channels_per_offset_group() const { return channels / offset_groups; }
};

Geometry make_geometry(const at::Tensor& input, const at::Tensor& weight, const DeformConvParams& p) {
  const int64_t out_h = (input.size(2) + 2 * p.pad_h - (p.dilation_h * (weight.size(2) - 1) + 1)) / p.stride_h + 1;
  const int64_t out_w = (input.size(3) + 2 * p.pad_w - (p.dilation_w * (weight.size(3) - 1) + 1)) / p.stride_w + 1;
  return {input.size(1), input.size(2), input.size(3), weight.size(2), weight.size(3), p.stride_h, p.stride_w,
          p.pad_h,       p.pad_w,       p.dilation_h,  p.dilation_w,   p.groups,       p.offset_groups, out_h,
          out_w,         p.use_mask};
}

// The samples of one image, indexed [offset group][tap][output pixel]. offset is [2 * G * K, P] of (dy, dx)
// pairs, mask [G * K, P] (unused without use_mask).
template <typename scalar_t>
std::vector<Sample<scalar_t>> sample_table(const scalar_t* offset, const scalar_t* mask, const Geometry& g) {
  const int64_t taps = g.taps(), pixels = g.pixels();
  std::vector<Sample<scalar_t>> table(g.offset_groups * taps * pixels);
  at::parallel_for(0, g.offset_groups * taps, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // row = offset group * taps + tap
      const int64_t tap = row % taps, group = row / taps;
      const int64_t ki = tap / g.kernel_w, kj = tap % g.kernel_w;
      const scalar_t* dy = offset + (group * 2 * taps + 2 * tap) * pixels;
      const scalar_t* dx = dy + pixels;
      const scalar_t* m = g.use_mask ? mask + row * pixels : nullptr;
      Sample<scalar_t>* out = table.data() + row * pixels;
      for (int64_t p = 0; p < pixels; ++p) {
        const int64_t oy = p / g.out_w, ox = p % g.out_w;
        const scalar_t y = static_cast<scalar_t>(oy * g.stride_h - g.pad_h + ki * g.dilation_h) + dy[p];
        const scalar_t x = static_cast<scalar_t>(ox * g.stride_w - g.pad_w + kj * g.dilation_w) + dx[p];
        Sample<scalar_t>& s = out[p];
        s.mask = m ? m[p] : scalar_t(1);
        const bool in_range = y > -1 && y < g.height && x > -1 && x < g.width;
        // Corners of a sample far outside could overflow int64 arithmetic; none of them is inside anyway.
        const bool near = y > -2 && y < g.height + 1 && x > -2 && x < g.width + 1;
        const int64_t y0 = near ? static_cast<int64_t>(std::floor(y)) : -2;
        const int64_t x0 = near ? static_cast<int64_t>(std::floor(x)) : -2;
        s.frac_h = near ? y - static_cast<scalar_t>(y0) : scalar_t(0);
        s.frac_w = near ? x - static_cast<scalar_t>(x0) : scalar_t(0);
        const scalar_t hh = 1 - s.frac_h, hw = 1 - s.frac_w;
        const scalar_t corner_weight[4] = {hh * hw, hh * s.frac_w, s.frac_h * hw, s.frac_h * s.frac_w};
        for (int c = 0; c < 4; ++c) {
          const int64_t cy = y0 + c / 2, cx = x0 + c % 2;
          const bool inside = cy >= 0 && cy < g.height && cx >= 0 && cx < g.width;
          s.index[c] = inside ? static_cast<int32_t>(cy * g.width + cx) : 0;
          s.inside[c] = inside ? scalar_t(1) : scalar_t(0);
          s.weight[c] = inside && in_range ? corner_weight[c] : scalar_t(0);
        }
      }
    }
  });
  return table;
}

template <typename scalar_t>
inline scalar_t interpolate(const scalar_t* plane, const Sample<scalar_t>& s) {
  return s.weight[0] * plane[s.index[0]] + s.weight[1] * plane[s.index[1]] + s.weight[2] * plane[s.index[2]] +
         s.weight[3] * plane[s.index[3]];
}

// Samples are processed in blocks of kBlock pixels of one (offset group, tap) row, for every channel of the group
// in turn, so that the block's table entries are read from the L1 cache by all those channels.
constexpr int64_t kBlock = 256;

// columns [C * K, P]: row c * K + k holds channel c sampled at tap k, times the mask.
template <typename scalar_t>
void fill_columns(const scalar_t* image, const std::vector<Sample<scalar_t>>& table, const Geometry& g,
                  scalar_t* columns) {
  const int64_t taps = g.taps(), pixels = g.pixels(), plane_size = g.height * g.width;
  const int64_t per_group = g.channels_per_offset_group();
  const int64_t blocks = (pixels + kBlock - 1) / kBlock;
  at::parallel_for(0, g.offset_groups * taps * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / blocks, group = row / taps, tap = row % taps;  // row: offset group * taps + tap
      const int64_t first = (item % blocks) * kBlock, count = std::min(kBlock, pixels - first);
      const Sample<scalar_t>* samples = table.data() + row * pixels + first;
      for (int64_t channel = group * per_group; channel < (group + 1) * per_group; ++channel) {
        const scalar_t* plane = image + channel * plane_size;
        scalar_t* column = columns + (channel * taps + tap) * pixels + first;
        for (int64_t p = 0; p < count; ++p) {
          column[p] = samples[p].mask * interpolate(plane, samples[p]);
        }
      }
    }
  });
}

// grad_image [C, H, W] += the columns' gradient carried back through the sampling. Each thread owns a range of
// channels (samples of different pixels add to the same input pixel); within it, blocks of samples as above.
template <typename scalar_t>
void scatter_columns(const scalar_t* grad_columns, const std::vector<Sample<scalar_t>>& table, const Geometry& g,
                     scalar_t* grad_image) {
  const int64_t taps = g.taps(), pixels = g.pixels(), plane_size = g.height * g.width;
  const int64_t per_group = g.channels_per_offset_group();
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t group_begin = begin; group_begin < end;) {  // the part of [begin, end) in one offset group
      const int64_t group = group_begin / per_group, group_end = std::min(end, (group + 1) * per_group);
      for (int64_t tap = 0; tap < taps; ++tap) {
        const Sample<scalar_t>* row = table.data() + (group * taps + tap) * pixels;
        for (int64_t first = 0; first < pixels; first += kBlock) {
          const int64_t count = std::min(kBlock, pixels - first);
          for (int64_t channel = group_begin; channel < group_end; ++channel) {
            scalar_t* plane = grad_image + channel * plane_size;
            const scalar_t* column = grad_columns + (channel * taps + tap) * pixels + first;
            for (int64_t p = 0; p < count; ++p) {
              const Sample<scalar_t>& s = row[first + p];
              for (int c = 0; c < 4; ++c) {
                plane[s.index[c]] += s.mask * s.weight[c] * column[p];
              }
            }
          }
        }
      }
      group_begin = group_end;
    }
  });
}

// Gradients w.r.t. one image's offsets [2 * G * K, P] and mask [G * K, P]: for each sample, the sum over the
// channels of its offset group of the column gradient times d(sample)/d(dy, dx) (and the sampled value for the
// mask). Threads split the (group, tap) rows' pixel blocks; each writes only its own outputs.
template <typename scalar_t>
void offset_and_mask_gradients(const scalar_t* image, const scalar_t* grad_columns,
                               const std::vector<Sample<scalar_t>>& table, const Geometry& g,
                               scalar_t* grad_offset, scalar_t* grad_mask) {
  const int64_t taps = g.taps(), pixels = g.pixels(), plane_size = g.height * g.width;
  const int64_t per_group = g.channels_per_offset_group();
  const int64_t blocks = (pixels + kBlock - 1) / kBlock;
  at::parallel_for(0, g.offset_groups * taps * blocks, 1, [&](int64_t begin, int64_t end) {
    scalar_t sum_dy[kBlock], sum_dx[kBlock], sum_mask[kBlock];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / blocks;  // offset group * taps + tap
      const int64_t group = row / taps, tap = row % taps;
      const int64_t first = (item % blocks) * kBlock, count = std::min(kBlock, pixels - first);
      const Sample<scalar_t>* samples = table.data() + row * pixels + first;
      std::fill_n(sum_dy, count, scalar_t(0));
      std::fill_n(sum_dx, count, scalar_t(0));
      std::fill_n(sum_mask, count, scalar_t(0));
      for (int64_t channel = group * per_group; channel < (group + 1) * per_group; ++channel) {
        const scalar_t* plane = image + channel * plane_size;
        const scalar_t* column = grad_columns + (channel * taps + tap) * pixels + first;
        for (int64_t p = 0; p < count; ++p) {
          const Sample<scalar_t>& s = samples[p];
          const scalar_t v00 = s.inside[0] * plane[s.index[0]], v01 = s.inside[1] * plane[s.index[1]];
          const scalar_t v10 = s.inside[2] * plane[s.index[2]], v11 = s.inside[3] * plane[s.index[3]];
          const scalar_t d_dy = s.frac_w * (v11 - v01) + (1 - s.frac_w) * (v10 - v00);
          const scalar_t d_dx = s.frac_h * (v11 - v10) + (1 - s.frac_h) * (v01 - v00);
          sum_dy[p] += s.mask * d_dy * column[p];
          sum_dx[p] += s.mask * d_dx * column[p];
          if (g.use_mask) {
            sum_mask[p] += column[p] * interpolate(plane, s);
          }
        }
      }
      scalar_t* out_dy = grad_offset + (group * 2 * taps + 2 * tap) * pixels + first;
      std::copy_n(sum_dy, count, out_dy);
      std::copy_n(sum_dx, count, out_dy + pixels);
      if (g.use_mask) {
        std::copy_n(sum_mask, count, grad_mask + row * pixels + first);
      }
    }
  });
}

// [groups, rows / groups, cols] view of a [rows, cols...] tensor, the layout of the per-group GEMMs.
at::Tensor per_group(const at::Tensor& t, int64_t groups) { return t.reshape({groups, t.size(0) / groups, -1}); }

}  // namespace

at::Tensor deform_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                     const at::Tensor& mask, const at::Tensor& bias, const DeformConvParams& params) {
  const Geometry g = make_geometry(input, weight, params);
  const int64_t batch = input.size(0), out_channels = weight.size(0);
  at::Tensor output = at::empty({batch, out_channels, g.out_h, g.out_w}, input.options());
  if (batch == 0) {
    return output;
  }
  const at::Tensor weight_groups = per_group(weight, g.groups);  // [groups, O / groups, C / groups * K]
  at::Tensor columns = at::empty({g.channels * g.taps(), g.pixels()}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_forward_cpu", [&] {
    for (int64_t n = 0; n < batch; ++n) {
      const auto table = sample_table(offset[n].data_ptr<scalar_t>(),
                                      g.use_mask ? mask[n].data_ptr<scalar_t>() : nullptr, g);
      fill_columns(input[n].data_ptr<scalar_t>(), table, g, columns.data_ptr<scalar_t>());
      at::Tensor out = output[n].view({g.groups, out_channels / g.groups, g.pixels()});
      at::bmm_out(out, weight_groups, per_group(columns, g.groups));
    }
  });
  output.add_(bias.view({1, out_channels, 1, 1}));
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& bias, const DeformConvParams& params) {
  const Geometry g = make_geometry(input, weight, params);
  const int64_t batch = input.size(0), out_channels = weight.size(0);
  at::Tensor grad_input = at::zeros_like(input);
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_mask = at::zeros_like(mask);
  at::Tensor grad_weight = at::zeros_like(weight);
  at::Tensor grad_bias = grad.sum({0, 2, 3}).to(bias.scalar_type());
  if (batch == 0) {
    return {grad_input, grad_weight, grad_offset, grad_mask, grad_bias};
  }
  const at::Tensor weight_groups = per_group(weight, g.groups);
  at::Tensor grad_weight_groups = per_group(grad_weight, g.groups);  // a view: GEMMs accumulate into grad_weight
  at::Tensor columns = at::empty({g.channels * g.taps(), g.pixels()}, input.options());
  at::Tensor grad_columns = at::empty_like(columns);
  at::Tensor grad_columns_groups = per_group(grad_columns, g.groups);  // views of the column matrices
  const at::Tensor columns_groups = per_group(columns, g.groups);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    for (int64_t n = 0; n < batch; ++n) {
      const at::Tensor grad_n = grad[n].view({g.groups, out_channels / g.groups, g.pixels()});
      at::bmm_out(grad_columns_groups, weight_groups.transpose(1, 2), grad_n);
      const auto table = sample_table(offset[n].data_ptr<scalar_t>(),
                                      g.use_mask ? mask[n].data_ptr<scalar_t>() : nullptr, g);
      const scalar_t* image = input[n].data_ptr<scalar_t>();
      scatter_columns(grad_columns.data_ptr<scalar_t>(), table, g, grad_input[n].data_ptr<scalar_t>());
      offset_and_mask_gradients(image, grad_columns.data_ptr<scalar_t>(), table, g,
                                grad_offset[n].data_ptr<scalar_t>(),
                                g.use_mask ? grad_mask[n].data_ptr<scalar_t>() : nullptr);
      fill_columns(image, table, g, columns.data_ptr<scalar_t>());
      grad_weight_groups.baddbmm_(grad_n, columns_groups.transpose(1, 2));
    }
  });
  return {grad_input, grad_weight, grad_offset, grad_mask, grad_bias};
}

}  // namespace detlib
