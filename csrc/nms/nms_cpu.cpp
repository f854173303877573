// Greedy NMS on the CPU, organised for throughput rather than as a box-by-box loop.
//
// Boxes are visited in score order in blocks of kBlock still-alive boxes. A block is first resolved
// on its own (sequentially: which members survive the earlier members of the block). Its survivors
// are then final, and the boxes after the block are tested against all of them at once: in parallel,
// branch-free over contiguous coordinate arrays (so the compiler vectorises the IoU), after which the
// suppressed boxes are compacted away. Every pair is decided by the same arithmetic as torchvision's
// kernel, so the kept set and its order are identical.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../detlib_ops.h"

namespace detlib {
namespace {

constexpr int64_t kBlock = 64;

// The value c of scalar_t such that, for every scalar_t x, `x > threshold` (compared in double)
// holds exactly when `x > c`: the threshold itself if representable, else the next value below it.
template <typename scalar_t>
scalar_t comparable_threshold(double threshold) {
  const double max = std::numeric_limits<scalar_t>::max();
  if (std::isnan(threshold)) return std::numeric_limits<scalar_t>::quiet_NaN();
  if (threshold >= max) return std::numeric_limits<scalar_t>::max();
  if (threshold <= -max) return -std::numeric_limits<scalar_t>::infinity();
  scalar_t c = static_cast<scalar_t>(threshold);
  if (static_cast<double>(c) > threshold) c = std::nextafter(c, -std::numeric_limits<scalar_t>::infinity());
  return c;
}

// Structure-of-arrays view of boxes in score order; `index` is the original box index.
template <typename scalar_t>
struct BoxArrays {
  std::vector<scalar_t> x1, y1, x2, y2, area;
  std::vector<int64_t> index;

  explicit BoxArrays(int64_t n) : x1(n), y1(n), x2(n), y2(n), area(n), index(n) {}

  void copy(int64_t from, int64_t to) {
    x1[to] = x1[from];
    y1[to] = y1[from];
    x2[to] = x2[from];
    y2[to] = y2[from];
    area[to] = area[from];
    index[to] = index[from];
  }

  void push(const BoxArrays& src, int64_t i, int64_t to) {
    x1[to] = src.x1[i];
    y1[to] = src.y1[i];
    x2[to] = src.x2[i];
    y2[to] = src.y2[i];
    area[to] = src.area[i];
    index[to] = src.index[i];
  }
};

// IoU of box a = (ax1, ay1, ax2, ay2, aarea) with box j of `b`, written exactly as torchvision
// computes it (same operations, same order, same type) so the comparison with the threshold agrees.
// `a < b ? b : a` is std::max(a, b); spelled out on values, not references, so that it vectorises.
template <typename scalar_t>
inline scalar_t iou(scalar_t ax1, scalar_t ay1, scalar_t ax2, scalar_t ay2, scalar_t aarea, const scalar_t* bx1,
                    const scalar_t* by1, const scalar_t* bx2, const scalar_t* by2, const scalar_t* barea, int64_t j) {
  const scalar_t x1 = bx1[j], y1 = by1[j], x2 = bx2[j], y2 = by2[j];
  const scalar_t xx1 = ax1 < x1 ? x1 : ax1;
  const scalar_t yy1 = ay1 < y1 ? y1 : ay1;
  const scalar_t xx2 = x2 < ax2 ? x2 : ax2;
  const scalar_t yy2 = y2 < ay2 ? y2 : ay2;
  const scalar_t w = xx2 - xx1, h = yy2 - yy1;
  const scalar_t inter = (0 < w ? w : 0) * (0 < h ? h : 0);
  return inter / (aarea + barea[j] - inter);
}

template <typename scalar_t>
at::Tensor nms_kernel(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  const int64_t n = boxes.size(0);
  const scalar_t threshold = comparable_threshold<scalar_t>(iou_threshold);
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t* order_ptr = order.data_ptr<int64_t>();
  const scalar_t* box_ptr = boxes.data_ptr<scalar_t>();

  BoxArrays<scalar_t> alive(n);
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* b = box_ptr + 4 * order_ptr[i];
    alive.x1[i] = b[0];
    alive.y1[i] = b[1];
    alive.x2[i] = b[2];
    alive.y2[i] = b[3];
    alive.area[i] = (b[2] - b[0]) * (b[3] - b[1]);
    alive.index[i] = order_ptr[i];
  }

  BoxArrays<scalar_t> block_kept(kBlock);
  // Flags as wide as the coordinates, so that the IoU loop vectorises with one lane per box.
  using flag_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
  std::vector<flag_t> suppressed(n);
  std::vector<int64_t> keep;
  int64_t count = n;  // alive boxes occupy [0, count) of `alive`, in score order

  while (count > 0) {
    const int64_t block = std::min(kBlock, count);
    int64_t kept = 0;
    for (int64_t m = 0; m < block; ++m) {
      bool drop = false;
      for (int64_t k = 0; k < kept && !drop; ++k) {
        drop = iou(block_kept.x1[k], block_kept.y1[k], block_kept.x2[k], block_kept.y2[k], block_kept.area[k],
                   alive.x1.data(), alive.y1.data(), alive.x2.data(), alive.y2.data(), alive.area.data(), m) >
               threshold;
      }
      if (!drop) {
        block_kept.push(alive, m, kept++);
        keep.push_back(alive.index[m]);
      }
    }
    if (block == count) break;

    // Threads only for about a million pairs or more: a parallel region costs far more than its
    // nominal microseconds when the cores are shared with other processes.
    const int64_t grain = std::max<int64_t>(256, (int64_t{1} << 20) / kept);
    at::parallel_for(block, count, grain, [&](int64_t begin, int64_t end) {
      const scalar_t* x1 = alive.x1.data();
      const scalar_t* y1 = alive.y1.data();
      const scalar_t* x2 = alive.x2.data();
      const scalar_t* y2 = alive.y2.data();
      const scalar_t* area = alive.area.data();
      flag_t* out = suppressed.data();
      // Tiles keep the flags and coordinates of a stretch of boxes in L1 across the kept boxes.
      constexpr int64_t kTile = 512;
      for (int64_t tile = begin; tile < end; tile += kTile) {
        const int64_t tile_end = std::min(end, tile + kTile);
        for (int64_t k = 0; k < kept; ++k) {
          const scalar_t kx1 = block_kept.x1[k], ky1 = block_kept.y1[k], kx2 = block_kept.x2[k],
                         ky2 = block_kept.y2[k], karea = block_kept.area[k];
          for (int64_t j = tile; j < tile_end; ++j) {
            out[j] |= iou(kx1, ky1, kx2, ky2, karea, x1, y1, x2, y2, area, j) > threshold;
          }
        }
      }
    });

    int64_t next = 0;
    for (int64_t j = block; j < count; ++j) {
      if (!suppressed[j]) alive.copy(j, next++);
      suppressed[j] = 0;
    }
    count = next;
  }

  return at::tensor(keep, boxes.options().dtype(at::kLong));
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    keep = nms_kernel<scalar_t>(boxes, scores, iou_threshold);
  });
  return keep;
}

}  // namespace detlib
