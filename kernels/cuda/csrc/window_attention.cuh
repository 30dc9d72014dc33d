// Swin-style window attention, one block per (image, window, head), float32 arithmetic whatever
// the input dtype; the products on tensor cores (mma_tf32.cuh, window_attention_{fwd,bwd}.cu).
//
// Token t = (ti, tj) of window (wr, wc) sits at (wr w + ti + s) mod H, (wc w + tj + s) mod W) of the
// map, s = w/2 when shifted, else 0: the cyclic shift and the window partition are index
// arithmetic on loads and stores, and the output lands back at the token's own position. In a
// shifted map's last window row, tokens on opposite sides of ti = w - w/2 do not attend to each
// other (the official generate_mask), and the same for columns.
//
// Forward: S = scale Q K^T + bias (masked), the row softmax, O = P V. Backward: P again (no
// statistics saved), dP = dO V^T, dS = P (dP - rowsum(P dP)), dq = scale dS K, dk = scale dS^T Q,
// dv = P^T dO; every element of d qkv has one owner (no atomics); d table: one partial per block,
// each bin summed over its token pairs in a fixed order, summed over the blocks by the caller.
// Every sum has one fixed order: the same bits from run to run.

#pragma once

#include <type_traits>

#include "element.cuh"
#include "window_attention.h"

namespace mambaic {
namespace attention {

constexpr int kTokens = kMaxWindow * kMaxWindow;
constexpr int kBins = (2 * kMaxWindow - 1) * (2 * kMaxWindow - 1);

// Sum and maximum of v over the four adjacent lanes of a group (a row's values in an mma fragment),
// combined in the same order in each lane: a fixed order, the same bits in all four.
__device__ __forceinline__ float token_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float token_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
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
