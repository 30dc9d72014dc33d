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
#include "mma_tf32.cuh"
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

// What the forward and the backward share.
//
// One block of 4 warps per (image, window, head); warp w owns the query rows 16w .. 16w + 15 of
// the window's tokens, padded to 64 (rows and keys), and head_dim is padded with zeros to kHD.
// The window's rows of the head are staged in shared memory as float32, with each token's map
// offset and score code (bias position and shifted-mask region). Each block checks that every
// staged value splits; if one does not (NaN, Inf), the whole block takes the exact float32 path,
// which reproduces the reference's non-finite pattern.

constexpr int kMmaThreads = 128;
constexpr int kPadRegion = 4;  // a padded key's region: no query's, so that its score is -inf

// Per token: the map position (b, row, col) flattened; code = bias position ti (2w-1) + tj, plus
// the shifted-mask region << 8. Two tokens of the window see each other iff their regions match
// (the region bits: last window row and ti < w - w/2; last window column and tj < w - w/2).
struct TokenTable {
  int64_t offset[kTokens];
  int code[kTokens];
};

struct MmaWindow {
  int64_t b;
  int wr, wc, n_rows, n_cols, head, w, tokens, side, bins;

  // blockIdx.x = ((b n_rows + wr) n_cols + wc) heads + head, below 2^31 (window_attention_unsupported).
  __device__ explicit MmaWindow(const WindowAttentionParams& p) {
    w = p.window, tokens = w * w, side = 2 * w - 1, bins = side * side;
    n_rows = static_cast<int>(p.height / w), n_cols = static_cast<int>(p.width / w);
    int i = static_cast<int>(blockIdx.x);
    head = i % p.heads, i /= p.heads;
    wc = i % n_cols, i /= n_cols;
    wr = i % n_rows, b = i / n_rows;
  }

  // Threads 0..63 fill tok; padded tokens get offset 0 (never used) and the padding region.
  __device__ void describe_tokens(const WindowAttentionParams& p, TokenTable& tok) const {
    const int t = threadIdx.x;
    if (t >= kTokens) return;
    if (t >= tokens) {
      tok.offset[t] = 0, tok.code[t] = kPadRegion << 8;
      return;
    }
    const int ti = t / w, tj = t - ti * w, s = p.shifted ? w / 2 : 0, half = w - w / 2;
    int64_t r = int64_t{wr} * w + ti + s, c = int64_t{wc} * w + tj + s;
    if (r >= p.height) r -= p.height;  // the cyclic shift: r < 2H
    if (c >= p.width) c -= p.width;
    tok.offset[t] = (b * p.height + r) * p.width + c;
    const int region = p.shifted ? int(wr == n_rows - 1 && ti < half) | int(wc == n_cols - 1 && tj < half) << 1 : 0;
    tok.code[t] = (ti * side + tj) | region << 8;
  }

  __device__ void load_bias(const WindowAttentionParams& p, float* bias) const {
    for (int i = threadIdx.x; i < bins; i += kMmaThreads) bias[i] = p.table[head * bins + i];
  }
};

// A query row's code: a padded row takes token 0's, so that it sees a key and stays finite.
__device__ __forceinline__ int query_code(const TokenTable& tok, int i, int tokens) {
  return tok.code[i < tokens ? i : 0];
}

// The score of a query and a key from their dot product: scaled, biased, or -inf where masked.
struct ScoreRule {
  const float* bias;
  float scale;
  int base;  // (w - 1) (2w - 1) + w - 1: the bias index of equal positions
  __device__ ScoreRule(const float* bias_, float scale_, int w) : bias(bias_), scale(scale_), base((w - 1) * 2 * w) {}
  __device__ float operator()(float dot, int code_i, int code_j) const {
    return (code_i >> 8) == (code_j >> 8) ? dot * scale + bias[(code_i & 0xff) - (code_j & 0xff) + base] : -INFINITY;
  }
};

// One matrix of the window, rows [0, 64) x channels [channel0, channel0 + kHD) of a (positions, channels)
// map, staged through registers: zeros past head_dim and past the window. Threads take consecutive
// channels (a warp reads whole rows), and each thread loads all of its values before it stores any,
// so that a block waits for global memory once per kernel, not once per value.
template <typename T, int kHD>
struct StagedRows {
  static constexpr int kPerThread = kTokens * kHD / kMmaThreads;
  float x[kPerThread];

  __device__ void load(const T* map, int64_t channels, int channel0, int head_dim, const TokenTable& tok,
                       int tokens) {
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int idx = threadIdx.x + k * kMmaThreads, t = idx / kHD, d = idx % kHD;
      x[k] = t < tokens && d < head_dim ? to_float(map[tok.offset[t] * channels + channel0 + d]) : 0.f;
    }
  }
  // To dst (kStride floats a row); true if every value splits.
  template <int kStride>
  __device__ bool store(float* dst) const {
    bool ok = true;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int idx = threadIdx.x + k * kMmaThreads;
      dst[idx / kHD * kStride + idx % kHD] = x[k];
      ok &= mma::splittable(x[k]);
    }
    return ok;
  }
};

// S = scale Q K^T + bias, masked, for the warp's query rows r0 .. r0+15 and all 64 keys: s[nt] is the
// C tile of keys 8nt .. 8nt+7. Key tiles past the window are -inf without a product, padded keys
// inside the last tile -inf by their region.
template <int kHD, int kRowQ, int kRowK>
__device__ void warp_scores(const float* q_s, const float* k_s, const TokenTable& tok, const ScoreRule& rule, int r0,
                            int tokens, int head_dim, mma::Lane l, float (&s)[8][4]) {
  const int k_steps = (head_dim + 7) / 8, key_tiles = (tokens + 7) / 8;
  mma::FragA qa[kHD / 8];
#pragma unroll
  for (int kt = 0; kt < kHD / 8; ++kt)
    if (kt < k_steps) qa[kt] = mma::load_a<kRowQ>(q_s, r0, 8 * kt, l);
  const int code0 = query_code(tok, r0 + l.g, tokens), code1 = query_code(tok, r0 + l.g + 8, tokens);
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    if (nt < key_tiles) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kt = 0; kt < kHD / 8; ++kt)
        if (kt < k_steps) mma::mma3(s[nt], qa[kt], mma::load_b_nk<kRowK>(k_s, 8 * nt, 8 * kt, l));
      const int2 code = *reinterpret_cast<const int2*>(&tok.code[8 * nt + 2 * l.t]);  // keys 2t, 2t + 1
      s[nt][0] = rule(s[nt][0], code0, code.x), s[nt][1] = rule(s[nt][1], code0, code.y);
      s[nt][2] = rule(s[nt][2], code1, code.x), s[nt][3] = rule(s[nt][3], code1, code.y);
    } else {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = -INFINITY;
    }
  }
}

// s <- exp(s - row max), in place; sum0, sum1: the sums of rows g and g + 8. A row's 64 scores lie
// in the four lanes of its group, 16 each: each lane sums its own in key order, then token_sum
// combines the four (xor 1, then 2) in the same order in every lane.
__device__ __forceinline__ void softmax_rows(float (&s)[8][4], float& sum0, float& sum1) {
  float top0 = -INFINITY, top1 = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    top0 = fmaxf(top0, fmaxf(s[nt][0], s[nt][1]));
    top1 = fmaxf(top1, fmaxf(s[nt][2], s[nt][3]));
  }
  top0 = token_max(top0), top1 = token_max(top1);  // finite: every row sees a key
  sum0 = sum1 = 0.f;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    s[nt][0] = expf(s[nt][0] - top0), s[nt][1] = expf(s[nt][1] - top0);
    s[nt][2] = expf(s[nt][2] - top1), s[nt][3] = expf(s[nt][3] - top1);
    sum0 += s[nt][0], sum0 += s[nt][1];
    sum1 += s[nt][2], sum1 += s[nt][3];
  }
  sum0 = token_sum(sum0), sum1 = token_sum(sum1);
}

// Rows r0 + g and r0 + g + 8 of the C tiles acc[dt] (columns 8dt + 2t, 8dt + 2t + 1), times scale0 and
// scale1, to channels channel0 + column of those tokens in a (positions, channels) map; nothing for
// rows past the window or columns past head_dim.
template <typename T, int kTiles>
__device__ __forceinline__ void store_rows(T* map, int64_t channels, int channel0, int head_dim,
                                           const TokenTable& tok, int tokens, int r0, mma::Lane l,
                                           const float (&acc)[kTiles][4], float scale0, float scale1) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = r0 + l.g + 8 * half;
    if (i >= tokens) continue;
    T* row = map + tok.offset[i] * channels + channel0;
    const float scale = half ? scale1 : scale0;
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt) {
      const int d = 8 * dt + 2 * l.t;
      if (d < head_dim) row[d] = from_float<T>(acc[dt][2 * half] * scale);
      if (d + 1 < head_dim) row[d + 1] = from_float<T>(acc[dt][2 * half + 1] * scale);
    }
  }
}

// The exact path's score: a plain float32 dot product in channel order, then the rule.
__device__ __forceinline__ float exact_score(const float* q, const float* k, int head_dim, const ScoreRule& rule,
                                             int code_i, int code_j) {
  float dot = 0.f;
  for (int d = 0; d < head_dim; ++d) dot = fmaf(q[d], k[d], dot);
  return rule(dot, code_i, code_j);
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
