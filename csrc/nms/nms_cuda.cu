// Non-maximum suppression on CUDA.
//
// Boxes are sorted by descending score (stable, so ties keep their input order) and split into
// blocks of 64. `overlap_mask_kernel` writes, for every box i and every block of later boxes, one
// 64-bit word whose bit j says "IoU(i, j) > threshold". `greedy_keep_kernel` then walks the sorted
// boxes block by block in a single thread block, so the greedy pass needs no copy of the mask to
// the host: the only host sync is reading back how many boxes were kept.

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../detlib_ops.h"

namespace detlib {
namespace {

using Word = unsigned long long;
constexpr int kWordBits = 64;  // boxes per block: one bit each in a Word
constexpr int kGreedyThreads = 1024;
constexpr int kGather = 16;  // mask rows loaded together in the greedy pass

// IoU(a, b) > threshold for XYXY boxes. The operations and their rounding follow torchvision's
// kernel step for step (the threshold as float; for half/bfloat16 the width, height and second
// side length rounded to the box type), so keep indices agree bit for bit at the threshold.
template <typename scalar_t>
__device__ __forceinline__ bool iou_above(const scalar_t* a, const scalar_t* b, float threshold) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
  const acc_t left = max(static_cast<acc_t>(a[0]), static_cast<acc_t>(b[0]));
  const acc_t right = min(static_cast<acc_t>(a[2]), static_cast<acc_t>(b[2]));
  const acc_t top = max(static_cast<acc_t>(a[1]), static_cast<acc_t>(b[1]));
  const acc_t bottom = min(static_cast<acc_t>(a[3]), static_cast<acc_t>(b[3]));
  const acc_t width = static_cast<scalar_t>(max(right - left, acc_t(0)));
  const acc_t height = static_cast<scalar_t>(max(bottom - top, acc_t(0)));
  const acc_t inter = width * height;
  const acc_t area_a = (static_cast<acc_t>(a[2]) - static_cast<acc_t>(a[0])) *
      static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(a[3]) - static_cast<acc_t>(a[1])));
  const acc_t area_b = (static_cast<acc_t>(b[2]) - static_cast<acc_t>(b[0])) *
      static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(b[3]) - static_cast<acc_t>(b[1])));
  return inter / (area_a + area_b - inter) > threshold;
}

// Grid (blocks, blocks), 64 threads. Block (row, col) compares the 64 boxes of block `row` with
// those of block `col`; only col >= row is needed, since suppression only flows to lower scores.
template <typename scalar_t>
__global__ void overlap_mask_kernel(
    const scalar_t* __restrict__ boxes,  // [n, 4], sorted by descending score
    int64_t n,
    float threshold,
    Word* __restrict__ mask) {  // [n, blocks]
  const int row_block = blockIdx.y;
  const int col_block = blockIdx.x;
  if (row_block > col_block) {
    return;
  }
  const int64_t blocks = gridDim.x;
  const int64_t row0 = static_cast<int64_t>(row_block) * kWordBits;
  const int64_t col0 = static_cast<int64_t>(col_block) * kWordBits;
  const int rows = static_cast<int>(min(n - row0, static_cast<int64_t>(kWordBits)));
  const int cols = static_cast<int>(min(n - col0, static_cast<int64_t>(kWordBits)));

  __shared__ scalar_t col_boxes[kWordBits * 4];
  if (threadIdx.x < cols) {
    for (int k = 0; k < 4; ++k) {
      col_boxes[threadIdx.x * 4 + k] = boxes[(col0 + threadIdx.x) * 4 + k];
    }
  }
  __syncthreads();
  if (threadIdx.x >= rows) {
    return;
  }

  const int64_t row = row0 + threadIdx.x;
  scalar_t own[4];
  for (int k = 0; k < 4; ++k) {
    own[k] = boxes[row * 4 + k];
  }
  // On the diagonal block only later boxes may be suppressed; earlier bits stay zero.
  const int first = row_block == col_block ? threadIdx.x + 1 : 0;
  Word bits = 0;
  for (int j = first; j < cols; ++j) {
    if (iou_above(own, col_boxes + j * 4, threshold)) {
      bits |= Word(1) << j;
    }
  }
  mask[row * blocks + col_block] = bits;
}

// One block of kGreedyThreads threads; dynamic shared memory holds `suppressed`, one bit per box.
// For each block of 64 boxes in score order: thread 0 resolves the block against itself (a box is
// kept unless an earlier kept box suppressed it), then the kept boxes' original indices are
// appended and all threads OR the kept boxes' mask rows into the later blocks' suppressed bits.
__global__ void __launch_bounds__(kGreedyThreads, 1) greedy_keep_kernel(
    const Word* __restrict__ mask,  // [n, blocks]
    const int64_t* __restrict__ order,  // [n], sorted position -> input index
    int64_t n,
    int blocks,
    int64_t* __restrict__ keep,  // [n], the first *num_kept entries are written
    int64_t* __restrict__ num_kept) {
  extern __shared__ Word suppressed[];  // [blocks]
  __shared__ Word diagonal[kWordBits];  // mask words of the current block against itself
  __shared__ Word kept_shared;

  const auto rows_in_block = [n](int b) {
    return static_cast<int>(min(n - static_cast<int64_t>(b) * kWordBits, static_cast<int64_t>(kWordBits)));
  };
  const auto diagonal_word = [mask, blocks](int b) {
    return mask[(static_cast<int64_t>(b) * kWordBits + threadIdx.x) * blocks + b];
  };

  for (int c = threadIdx.x; c < blocks; c += blockDim.x) {
    suppressed[c] = 0;
  }
  if (threadIdx.x < rows_in_block(0)) {
    diagonal[threadIdx.x] = diagonal_word(0);
  }
  int64_t count = 0;  // same value in every thread
  for (int b = 0; b < blocks; ++b) {
    const int64_t row0 = static_cast<int64_t>(b) * kWordBits;
    const int rows = rows_in_block(b);
    __syncthreads();  // diagonal[] and suppressed[b] are complete

    if (threadIdx.x == 0) {
      const Word valid = rows == kWordBits ? ~Word(0) : (Word(1) << rows) - 1;
      Word removed = suppressed[b];
      Word kept = 0;
      Word candidates = valid & ~removed;
      while (candidates != 0) {
        const int i = __ffsll(static_cast<long long>(candidates)) - 1;
        kept |= Word(1) << i;
        removed |= diagonal[i];
        candidates = valid & ~removed & ((~Word(0) << i) << 1);
      }
      kept_shared = kept;
    }
    __syncthreads();
    const Word kept = kept_shared;

    if (threadIdx.x < kWordBits && ((kept >> threadIdx.x) & 1)) {
      const Word earlier = kept & ((Word(1) << threadIdx.x) - 1);
      keep[count + __popcll(earlier)] = order[row0 + threadIdx.x];
    }
    count += __popcll(kept);

    // Fetch the next diagonal now; it is stored after the update below, hiding its latency.
    const int next_rows = b + 1 < blocks ? rows_in_block(b + 1) : 0;
    const Word next_diagonal = threadIdx.x < next_rows ? diagonal_word(b + 1) : 0;

    const Word* block_rows = mask + row0 * blocks;
    for (int c = b + 1 + threadIdx.x; c < blocks; c += blockDim.x) {
      // Kept rows are read kGather at a time with unconditional loads, so they are in flight
      // together; a round that runs out of kept rows re-reads its first one (harmless for OR).
      Word hit = 0;
      Word remaining = kept;
      while (remaining != 0) {
        const int first = __ffsll(static_cast<long long>(remaining)) - 1;
        const Word* rows[kGather];
#pragma unroll
        for (int u = 0; u < kGather; ++u) {
          const int i = remaining != 0 ? __ffsll(static_cast<long long>(remaining)) - 1 : first;
          remaining &= remaining - 1;
          rows[u] = block_rows + static_cast<int64_t>(i) * blocks + c;
        }
        Word words[kGather];
#pragma unroll
        for (int u = 0; u < kGather; ++u) {
          words[u] = *rows[u];
        }
#pragma unroll
        for (int u = 0; u < kGather; ++u) {
          hit |= words[u];
        }
      }
      suppressed[c] |= hit;
    }
    if (threadIdx.x < next_rows) {
      diagonal[threadIdx.x] = next_diagonal;
    }
  }
  if (threadIdx.x == 0) {
    *num_kept = count;
  }
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const int64_t blocks64 = (n + kWordBits - 1) / kWordBits;
  TORCH_CHECK(
      blocks64 <= 65535,
      "nms_cuda: ", n, " boxes is more than the CUDA kernel supports (at most ", 65535 * kWordBits, ")");
  const int blocks = static_cast<int>(blocks64);

  const size_t suppressed_bytes = static_cast<size_t>(blocks) * sizeof(Word);
  int max_shared = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(
      &max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, boxes.device().index()));
  TORCH_CHECK(
      suppressed_bytes + (kWordBits + 1) * sizeof(Word) <= static_cast<size_t>(max_shared),
      "nms_cuda: ", n, " boxes need more shared memory than this GPU has");
  if (suppressed_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        greedy_keep_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(suppressed_bytes)));
  }

  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  at::Tensor mask = at::empty({n, blocks}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kLong));
  at::Tensor num_kept = at::empty({1}, boxes.options().dtype(at::kLong));

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, boxes.scalar_type(), "nms_cuda", [&] {
        overlap_mask_kernel<scalar_t><<<dim3(blocks, blocks), kWordBits, 0, stream>>>(
            sorted_boxes.data_ptr<scalar_t>(), n, static_cast<float>(iou_threshold),
            reinterpret_cast<Word*>(mask.data_ptr<int64_t>()));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  greedy_keep_kernel<<<1, kGreedyThreads, suppressed_bytes, stream>>>(
      reinterpret_cast<const Word*>(mask.data_ptr<int64_t>()), order.data_ptr<int64_t>(), n, blocks,
      keep.data_ptr<int64_t>(), num_kept.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  return keep.narrow(0, 0, num_kept.item<int64_t>());
}

}  // namespace detlib
