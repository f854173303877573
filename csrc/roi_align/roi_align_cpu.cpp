// ROIAlign on the CPU with torchvision's sampling rule, evaluated separably.
//
// Each output bin averages bilinear samples on a grid_h x grid_w lattice. A bilinear weight is the
// product of a row weight and a column weight, and a sample outside the map (y or x beyond [-1, size])
// contributes nothing, so bin (ph, pw) = sum_rows wy * sum_cols wx * input[row, col] / count. Per roi
// the (row, weight) lists of every ph and the (column, weight) lists of every pw are built once and
// reused for all channels. A channel is then done in two passes per ph: interpolate along y into a
// buffer holding the roi's columns (contiguous for the usual adaptive sampling, so it vectorises),
// then combine buffer entries along x for each pw. Every input pixel is read about once instead of
// four times per sample.
//
// Loops run channel-outer, roi-inner: a feature (or gradient) plane stays in cache while every roi
// of its image reads (or writes) it, instead of each roi fetching every channel from memory. Work is
// split over channels in the forward and in the backward pass alike: a gradient plane is written by
// one thread only, so the backward pass needs neither atomics nor reductions.
//
// Channels_last (NHWC) maps, what detlib's models use on the CPU, are read and written in place rather than
// copied to NCHW: there a pixel's channels are contiguous, and the same two passes work on all channels (or a
// block of them) at once. The forward pass is split over rois, the backward pass over blocks of channels, so
// again each gradient value is written by one thread, in a fixed order.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../detlib_ops.h"

namespace detlib {
namespace {

// Sampling geometry of one roi, in feature-map coordinates.
template <typename T>
struct RoiGeometry {
  int64_t batch_index;
  T start_h, start_w, bin_h, bin_w;
  int64_t grid_h, grid_w;
  T count;  // number of samples per bin, the divisor of the average

  RoiGeometry(const T* roi, double spatial_scale, int64_t pooled_height, int64_t pooled_width,
              int64_t sampling_ratio, bool aligned) {
    batch_index = static_cast<int64_t>(roi[0]);
    const T offset = aligned ? static_cast<T>(0.5) : static_cast<T>(0.0);
    const T scale = static_cast<T>(spatial_scale);
    start_w = roi[1] * scale - offset;
    start_h = roi[2] * scale - offset;
    const T end_w = roi[3] * scale - offset;
    const T end_h = roi[4] * scale - offset;
    T roi_w = end_w - start_w;
    T roi_h = end_h - start_h;
    if (!aligned) {  // legacy behaviour: rois are at least one pixel
      roi_w = std::max(roi_w, static_cast<T>(1.));
      roi_h = std::max(roi_h, static_cast<T>(1.));
    }
    bin_h = roi_h / static_cast<T>(pooled_height);
    bin_w = roi_w / static_cast<T>(pooled_width);
    grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(roi_h / pooled_height));
    grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(roi_w / pooled_width));
    count = static_cast<T>(std::max<int64_t>(grid_h * grid_w, 1));
  }
};

// Interpolation weights along one axis for every bin of a roi: bin p reads the entries
// [begin[p], begin[p + 1]) of (offset, weight), where offset is the row's or column's offset in a
// plane (row * width for rows, col for columns).
template <typename T>
struct AxisWeights {
  std::vector<int64_t> begin, offset;
  std::vector<T> weight;

  void build(T start, T bin_size, int64_t bins, int64_t grid, int64_t size, int64_t stride) {
    begin.assign(1, 0);
    offset.clear();
    weight.clear();
    for (int64_t p = 0; p < bins; ++p) {
      const int64_t first = static_cast<int64_t>(offset.size());
      for (int64_t i = 0; i < grid; ++i) {
        T v = start + p * bin_size + static_cast<T>(i + .5f) * bin_size / static_cast<T>(grid);
        if (v < -1.0 || v > static_cast<T>(size)) continue;  // outside the map: contributes 0
        if (v <= 0) v = 0;
        int64_t low = static_cast<int64_t>(v);
        int64_t high;
        if (low >= size - 1) {
          high = low = size - 1;
          v = static_cast<T>(low);
        } else {
          high = low + 1;
        }
        const T frac = v - static_cast<T>(low);
        add(first, low * stride, 1 - frac);
        add(first, high * stride, frac);
      }
      begin.push_back(static_cast<int64_t>(offset.size()));
    }
  }

 private:
  // Consecutive samples share rows (columns): merge with the last two entries of this bin.
  void add(int64_t first, int64_t off, T w) {
    const int64_t n = static_cast<int64_t>(offset.size());
    for (int64_t e = n - 1; e >= std::max(first, n - 2); --e) {
      if (offset[e] == off) {
        weight[e] += w;
        return;
      }
    }
    offset.push_back(off);
    weight.push_back(w);
  }
};

// Everything about a roi that does not depend on the channel: its batch index and sample count, the
// row weights of each ph, and the column weights of each pw, where a column is stored as its slot in
// `columns`, the sorted distinct columns the roi reads.
template <typename T>
struct RoiSampling {
  int64_t batch_index = 0;
  T count = 1;
  AxisWeights<T> ys, xs;
  std::vector<int64_t> columns;
  std::vector<int64_t> slot;  // per xs entry: index into `columns`
  bool contiguous = false;    // columns == first, first + 1, ..., last

  void build(const RoiGeometry<T>& g, int64_t pooled_height, int64_t pooled_width, int64_t height,
             int64_t width) {
    batch_index = g.batch_index;
    count = g.count;
    ys.build(g.start_h, g.bin_h, pooled_height, g.grid_h, height, width);
    xs.build(g.start_w, g.bin_w, pooled_width, g.grid_w, width, 1);
    columns = xs.offset;
    std::sort(columns.begin(), columns.end());
    columns.erase(std::unique(columns.begin(), columns.end()), columns.end());
    slot.resize(xs.offset.size());
    for (size_t q = 0; q < slot.size(); ++q) {
      slot[q] = std::lower_bound(columns.begin(), columns.end(), xs.offset[q]) - columns.begin();
    }
    contiguous = !columns.empty() && columns.back() - columns.front() + 1 == static_cast<int64_t>(columns.size());
  }
};

// The sampling of every roi, and the roi order to visit them in: grouped by image.
template <typename T>
struct AllRois {
  std::vector<RoiSampling<T>> rois;
  std::vector<int64_t> order;
  size_t max_columns = 0;

  AllRois(const T* roi_data, int64_t num_rois, int64_t batch_size, double spatial_scale, int64_t pooled_height,
          int64_t pooled_width, int64_t height, int64_t width, int64_t sampling_ratio, bool aligned)
      : rois(num_rois), order(num_rois) {
    for (int64_t n = 0; n < num_rois; ++n) {
      const int64_t b = static_cast<int64_t>(roi_data[5 * n]);
      TORCH_CHECK(b >= 0 && b < batch_size, "roi_align: roi ", n, " has batch index ", roi_data[5 * n],
                  " but the feature map has batch size ", batch_size);
    }
    at::parallel_for(0, num_rois, 64, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const RoiGeometry<T> g(roi_data + 5 * n, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                               aligned);
        rois[n].build(g, pooled_height, pooled_width, height, width);
      }
    });
    for (int64_t n = 0; n < num_rois; ++n) {
      order[n] = n;
      max_columns = std::max(max_columns, rois[n].columns.size());
    }
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return rois[a].batch_index < rois[b].batch_index; });
  }
};

// The two passes over one row of bins (one ph), shared by both layouts. A pixel (row, col) of the map holds
// `lanes` consecutive values at base + (row * width + col) * pixel_stride: one channel's value in NCHW
// (lanes = pixel_stride = 1), all channels or a block of them in NHWC (pixel_stride = channels). The buffer
// holds `lanes` values for each of the roi's columns.

// Forward, pass 1: buffer = the rows of bin row ph, interpolated along y, at each of the roi's columns.
template <typename T>
inline void interpolate_rows(const RoiSampling<T>& s, int64_t ph, const T* base, int64_t pixel_stride,
                             int64_t lanes, T* buffer) {
  const int64_t num_columns = static_cast<int64_t>(s.columns.size());
  std::fill(buffer, buffer + num_columns * lanes, T(0));
  for (int64_t r = s.ys.begin[ph]; r < s.ys.begin[ph + 1]; ++r) {
    const T* row = base + s.ys.offset[r] * pixel_stride;
    const T w = s.ys.weight[r];
    if (s.contiguous && lanes == pixel_stride) {  // the roi's part of the row is one run of memory
      const T* src = row + s.columns[0] * pixel_stride;
      for (int64_t i = 0; i < num_columns * lanes; ++i) buffer[i] += w * src[i];
    } else {
      for (int64_t u = 0; u < num_columns; ++u) {
        const T* src = row + s.columns[u] * pixel_stride;
        T* dst = buffer + u * lanes;
        for (int64_t l = 0; l < lanes; ++l) dst[l] += w * src[l];
      }
    }
  }
}

// Forward, pass 2: bin (ph, pw) = the buffer combined along x and averaged, `lanes` values.
template <typename T>
inline void combine_columns(const RoiSampling<T>& s, int64_t pw, const T* buffer, int64_t lanes, T* bin) {
  std::fill(bin, bin + lanes, T(0));
  for (int64_t q = s.xs.begin[pw]; q < s.xs.begin[pw + 1]; ++q) {
    const T w = s.xs.weight[q];
    const T* src = buffer + s.slot[q] * lanes;
    for (int64_t l = 0; l < lanes; ++l) bin[l] += w * src[l];
  }
  for (int64_t l = 0; l < lanes; ++l) bin[l] /= s.count;
}

// Backward, pass 1: adds the gradient of bin (ph, pw), already divided by the sample count, to the buffer
// (the gradient w.r.t. bin row ph's y-interpolated values) at the bin's columns.
template <typename T>
inline void spread_columns(const RoiSampling<T>& s, int64_t pw, const T* bin_grad, int64_t lanes, T* buffer) {
  for (int64_t q = s.xs.begin[pw]; q < s.xs.begin[pw + 1]; ++q) {
    const T w = s.xs.weight[q];
    T* dst = buffer + s.slot[q] * lanes;
    for (int64_t l = 0; l < lanes; ++l) dst[l] += bin_grad[l] * w;
  }
}

// Backward, pass 2: adds the buffer, weighted along y, to the gradient of the rows of bin row ph.
template <typename T>
inline void scatter_rows(const RoiSampling<T>& s, int64_t ph, const T* buffer, int64_t pixel_stride,
                         int64_t lanes, T* base) {
  const int64_t num_columns = static_cast<int64_t>(s.columns.size());
  for (int64_t r = s.ys.begin[ph]; r < s.ys.begin[ph + 1]; ++r) {
    T* row = base + s.ys.offset[r] * pixel_stride;
    const T w = s.ys.weight[r];
    if (s.contiguous && lanes == pixel_stride) {
      T* dst = row + s.columns[0] * pixel_stride;
      for (int64_t i = 0; i < num_columns * lanes; ++i) dst[i] += w * buffer[i];
    } else {
      for (int64_t u = 0; u < num_columns; ++u) {
        T* dst = row + s.columns[u] * pixel_stride;
        const T* src = buffer + u * lanes;
        for (int64_t l = 0; l < lanes; ++l) dst[l] += w * src[l];
      }
    }
  }
}

// NCHW input [N, C, H, W] -> output [K, C, PH, PW], one channel plane at a time (see the top of the file).
template <typename T>
void forward_kernel(const T* input, const AllRois<T>& all, T* output, int64_t channels, int64_t height,
                    int64_t width, int64_t pooled_height, int64_t pooled_width) {
  at::parallel_for(0, channels, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<T> along_y(all.max_columns);  // one ph's rows interpolated, at each of the roi's columns
    T* buffer = along_y.data();
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (const int64_t n : all.order) {
        const RoiSampling<T>& s = all.rois[n];
        const T* plane = input + (s.batch_index * channels + c) * height * width;
        T* out = output + (n * channels + c) * pooled_height * pooled_width;
        for (int64_t ph = 0; ph < pooled_height; ++ph) {
          interpolate_rows(s, ph, plane, 1, 1, buffer);
          for (int64_t pw = 0; pw < pooled_width; ++pw) combine_columns(s, pw, buffer, 1, out + ph * pooled_width + pw);
        }
      }
    }
  });
}

// NHWC (channels_last) input, stored [N, H, W, C] -> output [K, C, PH, PW] (NCHW). A pixel's channels are
// contiguous, so every step works on all channels at once; work is split over rois.
template <typename T>
void forward_kernel_nhwc(const T* input, const AllRois<T>& all, T* output, int64_t channels, int64_t height,
                         int64_t width, int64_t pooled_height, int64_t pooled_width) {
  const int64_t num_rois = static_cast<int64_t>(all.rois.size());
  const int64_t bins = pooled_height * pooled_width;
  at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> along_y(all.max_columns * channels), bin(channels);
    for (int64_t n = begin; n < end; ++n) {
      const RoiSampling<T>& s = all.rois[n];
      const T* image = input + s.batch_index * height * width * channels;
      T* out = output + n * channels * bins;
      for (int64_t ph = 0; ph < pooled_height; ++ph) {
        interpolate_rows(s, ph, image, channels, channels, along_y.data());
        for (int64_t pw = 0; pw < pooled_width; ++pw) {
          combine_columns(s, pw, along_y.data(), channels, bin.data());
          T* dst = out + ph * pooled_width + pw;
          for (int64_t c = 0; c < channels; ++c) dst[c * bins] = bin[c];
        }
      }
    }
  });
}

// grad [K, C, PH, PW] -> grad_input [N, C, H, W], both NCHW.
template <typename T>
void backward_kernel(const T* grad, const AllRois<T>& all, T* grad_input, int64_t channels, int64_t height,
                     int64_t width, int64_t pooled_height, int64_t pooled_width) {
  at::parallel_for(0, channels, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<T> along_y(all.max_columns);  // gradient w.r.t. one ph's y-interpolated values
    T* buffer = along_y.data();
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (const int64_t n : all.order) {
        const RoiSampling<T>& s = all.rois[n];
        T* plane = grad_input + (s.batch_index * channels + c) * height * width;
        const T* grad_bins = grad + (n * channels + c) * pooled_height * pooled_width;
        for (int64_t ph = 0; ph < pooled_height; ++ph) {
          std::fill(buffer, buffer + s.columns.size(), T(0));
          for (int64_t pw = 0; pw < pooled_width; ++pw) {
            const T bin_grad = grad_bins[ph * pooled_width + pw] / s.count;
            spread_columns(s, pw, &bin_grad, 1, buffer);
          }
          scatter_rows(s, ph, buffer, 1, 1, plane);
        }
      }
    }
  });
}

// grad and grad_input both NHWC (channels_last): grad stored [K, PH, PW, C], grad_input [N, H, W, C]. Work is
// split over blocks of channels, so that each thread alone writes its channels of grad_input: no atomics, and
// every gradient value is summed in the same order (rois by image, then bins) whatever the number of threads.
template <typename T>
void backward_kernel_nhwc(const T* grad, const AllRois<T>& all, T* grad_input, int64_t channels, int64_t height,
                          int64_t width, int64_t pooled_height, int64_t pooled_width) {
  constexpr int64_t kAlign = 16;  // channels per block: a multiple of 16 (a cache line of float)
  const int64_t per_thread = (channels + at::get_num_threads() - 1) / at::get_num_threads();
  const int64_t block = std::max<int64_t>(kAlign, (per_thread + kAlign - 1) / kAlign * kAlign);
  const int64_t num_blocks = (channels + block - 1) / block;
  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<T> along_y(all.max_columns * block), bin_grad(block);
    T* buffer = along_y.data();
    for (int64_t k = block_begin; k < block_end; ++k) {
      const int64_t c0 = k * block, lanes = std::min(block, channels - c0);
      for (const int64_t n : all.order) {
        const RoiSampling<T>& s = all.rois[n];
        T* image = grad_input + s.batch_index * height * width * channels + c0;
        const T* grad_bins = grad + n * pooled_height * pooled_width * channels + c0;
        for (int64_t ph = 0; ph < pooled_height; ++ph) {
          std::fill(buffer, buffer + s.columns.size() * lanes, T(0));
          for (int64_t pw = 0; pw < pooled_width; ++pw) {
            const T* g = grad_bins + (ph * pooled_width + pw) * channels;
            for (int64_t l = 0; l < lanes; ++l) bin_grad[l] = g[l] / s.count;
            spread_columns(s, pw, bin_grad.data(), lanes, buffer);
          }
          scatter_rows(s, ph, buffer, channels, lanes, image);
        }
      }
    }
  });
}

}  // namespace

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                 at::MemoryFormat layout) {
  const int64_t num_rois = rois.size(0), channels = input.size(1), height = input.size(2), width = input.size(3);
  if (num_rois == 0 || height == 0 || width == 0) {
    return at::zeros({num_rois, channels, pooled_height, pooled_width}, input.options());
  }
  at::Tensor output = at::empty({num_rois, channels, pooled_height, pooled_width}, input.options());  // all written
  const bool nhwc = layout == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_forward_cpu", [&] {
    const AllRois<scalar_t> all(rois.data_ptr<scalar_t>(), num_rois, input.size(0), spatial_scale, pooled_height,
                                pooled_width, height, width, sampling_ratio, aligned);
    auto kernel = nhwc ? forward_kernel_nhwc<scalar_t> : forward_kernel<scalar_t>;
    kernel(input.data_ptr<scalar_t>(), all, output.data_ptr<scalar_t>(), channels, height, width, pooled_height,
           pooled_width);
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned, at::MemoryFormat layout) {
  const int64_t num_rois = rois.size(0);
  // In `layout`: at::zeros would ignore the memory format.
  at::Tensor grad_input = at::empty({batch_size, channels, height, width}, grad.options().memory_format(layout));
  grad_input.zero_();
  if (num_rois == 0 || height == 0 || width == 0) return grad_input;
  const bool nhwc = layout == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward_cpu", [&] {
    const AllRois<scalar_t> all(rois.data_ptr<scalar_t>(), num_rois, batch_size, spatial_scale, pooled_height,
                                pooled_width, height, width, sampling_ratio, aligned);
    auto kernel = nhwc ? backward_kernel_nhwc<scalar_t> : backward_kernel<scalar_t>;
    kernel(grad.data_ptr<scalar_t>(), all, grad_input.data_ptr<scalar_t>(), channels, height, width, pooled_height,
           pooled_width);
  });
  return grad_input;
}

}  // namespace detlib
