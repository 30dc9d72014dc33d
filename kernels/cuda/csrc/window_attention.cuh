// Swin-style window attention, one block per (image, window, head) and four threads per token of
// the window (w*w <= 64), float32 arithmetic whatever the input dtype.
//
// Token t = (ti, tj) of window (wr, wc) sits at (wr w + ti + s) mod H, (wc w + tj + s) mod W) of the
// map, s = w/2 when shifted, else 0: the cyclic shift and the window partition are index
// arithmetic on loads and stores, and the output lands back at the token's own position. In a
// shifted map's last window row, tokens on opposite sides of ti = w - w/2 do not attend to each
// other (the official generate_mask), and the same for columns.
//
// Forward, four threads per query token (each every fourth key): the q row in registers, the
// window's K and V rows of the head in shared memory (read as float4), 16 scores per thread,
// softmax and the output row combined across the four by shuffles. One fixed order of every sum:
// bit-identical from run to run.
//
// Backward, the same four threads per token: P's row again (no statistics saved), over each
// thread's keys: dP_ij = dO_i . v_j, dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij), dq_i = scale sum_j
// dS_ij k_j (sums over the four by shuffles). P and dS go to shared memory, whose columns then
// give dk_j = scale sum_i dS_ij q_i and dv_j = sum_i P_ij dO_i, a quarter of the head_dim per
// thread. Every element of d qkv has one owner: no atomics. d table: thread b sums dS over the
// token pairs of bin b (a fixed order), one partial per block, summed over the blocks by the caller.

#pragma once

#include <type_traits>

#include "element.cuh"
#include "window_attention.h"

namespace mambaic {
namespace attention {

constexpr int kTokens = kMaxWindow * kMaxWindow;
constexpr int kSplit = 4;  // threads per token (adjacent lanes), each taking every fourth key
constexpr int kBins = (2 * kMaxWindow - 1) * (2 * kMaxWindow - 1);


// Where this block's window and head lie, and this thread's token.
struct Window {
  int64_t b, wr, wc;  // image, window row and column
  int head, n_rows, n_cols, w, tokens;
  int token, ti, tj;  // this thread's token in the window (valid when token < tokens)
  int64_t token_offset;  // the token's (b, row, col) * channels offset in qkv / out's channels-last layout

  __device__ Window(const WindowAttentionParams& p, int thread_token) : token(thread_token) {
    w = p.window, tokens = w * w;
    n_rows = static_cast<int>(p.height / w), n_cols = static_cast<int>(p.width / w);
    int64_t i = blockIdx.x;
    head = static_cast<int>(i % p.heads), i /= p.heads;
    wc = i % n_cols, i /= n_cols;
    wr = i % n_rows, b = i / n_rows;
    ti = token / w, tj = token % w;
    token_offset = offset_of(p, ti, tj);
  }
  // (b, row, col) of token (ti, tj) in the map, flattened
  __device__ int64_t offset_of(const WindowAttentionParams& p, int ti_, int tj_) const {
    const int s = p.shifted ? w / 2 : 0;
    const int64_t r = (wr * w + ti_ + s) % p.height, c = (wc * w + tj_ + s) % p.width;
    return (b * p.height + r) * p.width + c;
  }
  // True where the shifted-window mask forbids query (ti, tj) to see key (ki, kj).
  __device__ bool masked(const WindowAttentionParams& p, int ki, int kj) const {
    if (!p.shifted) return false;
    const int s = w - w / 2;
    return (wr == n_rows - 1 && ((ti < s) != (ki < s))) || (wc == n_cols - 1 && ((tj < s) != (kj < s)));
  }
};

// Sum and maximum of v over the kSplit = 4 adjacent lanes of one token, combined in the same order
// in each lane: a fixed order, the same bits in all four.
__device__ __forceinline__ float token_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float token_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// Head `head`'s q (part 0), k (1) or v (2) row of the token at map offset `token` into dst[0, kHD),
// zero past head_dim (dst is registers or a shared-memory row: the loop has a constant trip count).
template <typename T, int kHD>
__device__ __forceinline__ void load_row(const T* qkv, const WindowAttentionParams& p, int64_t token, int part,
                                         int head, float* dst) {
  const int dim = p.heads * p.head_dim;
  const T* src = qkv + token * 3 * dim + part * dim + head * p.head_dim;
#pragma unroll
  for (int d = 0; d < kHD; ++d) dst[d] = d < p.head_dim ? to_float(src[d]) : 0.f;
}

// Launches kernel_of(T{}, kHD) (a kernel instantiation: T the element type, kHD the head_dim bucket,
// 16 or kMaxHeadDim, both as compile-time constants), one block of `threads` per (image, window,
// head), with smem_of(kHD) bytes of dynamic shared memory: allowed past the 48 KiB default on each
// call, as the attribute belongs to the current device (a refusal shows as the launch's error).
template <typename KernelOf, typename SmemOf>
void launch_windows(const WindowAttentionParams& p, int threads, cudaStream_t stream, KernelOf&& kernel_of,
                    SmemOf&& smem_of) {
  const int64_t blocks = p.batch * (p.height / p.window) * (p.width / p.window) * p.heads;
  if (blocks == 0) return;
  with_element(p.element, [&](auto t) {
    auto launch = [&](auto head_dim) {
      const auto kernel = kernel_of(t, head_dim);
      const size_t bytes = smem_of(head_dim);
      if (bytes > 48 * 1024)
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
      kernel<<<static_cast<unsigned>(blocks), threads, bytes, stream>>>(p);
    };
    if (p.head_dim <= 16) launch(std::integral_constant<int, 16>{});
    else launch(std::integral_constant<int, kMaxHeadDim>{});
  });
}

}  // namespace attention
}  // namespace mambaic
