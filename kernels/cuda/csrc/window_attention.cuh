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

#include "element.cuh"
#include "window_attention.h"

namespace mambaic {
namespace attention {

constexpr int kTokens = kMaxWindow * kMaxWindow;
constexpr int kSplit = 4;  // threads per token (adjacent lanes), each taking every fourth key
constexpr int kBins = (2 * kMaxWindow - 1) * (2 * kMaxWindow - 1);


// Where this block's window and head lie, and this thread's token. 32-bit index arithmetic (the
// block index, the map's sides and the window counts fit: window_attention_unsupported checks),
// 64-bit only for the flattened offsets; a 64-bit division costs more than a window's scores.
struct Window {
  int b, wr, wc;  // image, window row and column
  int head, n_rows, n_cols, w, tokens, height, width, shift;
  int token, ti, tj;  // this thread's token in the window (valid when token < tokens)
  int64_t token_offset;  // the token's (b, row, col) * channels offset in qkv / out's channels-last layout

  __device__ Window(const WindowAttentionParams& p, int thread_token) : token(thread_token) {
    w = p.window, tokens = w * w;
    height = static_cast<int>(p.height), width = static_cast<int>(p.width), shift = p.shifted ? w / 2 : 0;
    n_rows = height / w, n_cols = width / w;
    unsigned i = blockIdx.x;
    head = static_cast<int>(i % static_cast<unsigned>(p.heads)), i /= static_cast<unsigned>(p.heads);
    wc = static_cast<int>(i % static_cast<unsigned>(n_cols)), i /= static_cast<unsigned>(n_cols);
    wr = static_cast<int>(i % static_cast<unsigned>(n_rows)), b = static_cast<int>(i / static_cast<unsigned>(n_rows));
    ti = token / w, tj = token % w;
    token_offset = offset_of(ti, tj);
  }
  // (b, row, col) of token (ti, tj) in the map, flattened; the shift wraps at most once
  __device__ int64_t offset_of(int ti_, int tj_) const {
    int r = wr * w + ti_ + shift, c = wc * w + tj_ + shift;
    r -= r >= height ? height : 0, c -= c >= width ? width : 0;
    return (static_cast<int64_t>(b) * height + r) * width + c;
  }
  // True where the shifted-window mask forbids query (ti, tj) to see key (ki, kj).
  __device__ bool masked(const WindowAttentionParams& p, int ki, int kj) const {
    if (!p.shifted) return false;
    const int s = w - w / 2;
    return (wr == n_rows - 1 && ((ti < s) != (ki < s))) || (wc == n_cols - 1 && ((tj < s) != (kj < s)));
  }
  // The bias table's bin of query (ti, tj) and key (ki, kj).
  __device__ int bin(int ki, int kj) const { return (ti - ki + w - 1) * (2 * w - 1) + tj - kj + w - 1; }
};

// (ki, kj) of every key j of the window, packed as ki << 8 | kj, so that the score loops read one
// shared word per key instead of dividing by a runtime window side.
__device__ __forceinline__ void fill_key_coords(int* coords, int w) {
  for (int j = threadIdx.x; j < w * w; j += blockDim.x) coords[j] = (j / w) << 8 | (j % w);
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

}  // namespace attention
}  // namespace mambaic
