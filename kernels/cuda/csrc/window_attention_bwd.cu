// Window attention backward (the algorithm: window_attention.cuh).

#include "window_attention.cuh"

namespace mambaic {
namespace attention {
namespace {

constexpr int kBwdThreads = kTokens * kSplit;  // 256

// Shared memory of one block, in floats: the window's q, dO, k and v rows (kHD + 4 floats apart, so
// that the four keys a quarter-warp reads as float4 fall in different banks), the (token x token)
// matrices P and dS (rows padded by one: a row written by one token, a column read by another,
// both conflict-free) and the head's bias table.
template <int kHD> struct BwdSmem {
  static constexpr int kRow = kHD + 4, kMatrixRow = kTokens + 1, kRows = kTokens * kRow;
  static constexpr int kQ = 0, kDout = kQ + kRows, kK = kDout + kRows, kV = kK + kRows, kP = kV + kRows,
                       kDs = kP + kTokens * kMatrixRow, kBias = kDs + kTokens * kMatrixRow, kFloats = kBias + kBins;
  static constexpr size_t kBytes = kFloats * sizeof(float);
};

template <int kHD>
__device__ __forceinline__ float dot_row(const float* a, const float* b) {
  const float4* a4 = reinterpret_cast<const float4*>(a);
  const float4* b4 = reinterpret_cast<const float4*>(b);
  float dot = 0.f;
#pragma unroll
  for (int d = 0; d < kHD / 4; ++d) {
    const float4 x = a4[d], y = b4[d];
    dot += x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
  }
  return dot;
}

// Threads as in the forward: four per token (adjacent lanes), each taking every fourth key for the
// row phase (P, dP, dS, dq); then, for the column phase (dk, dv), a quarter of the token's head_dim
// each, over every query.
template <typename T, int kHD>
__global__ void __launch_bounds__(kBwdThreads) window_attention_bwd_kernel(WindowAttentionParams p) {
  static_assert(kHD % (4 * kSplit) == 0, "rows are read as float4, a quarter per thread");
  using S = BwdSmem<kHD>;
  constexpr int kKeys = kTokens / kSplit;
  extern __shared__ __align__(16) float smem[];
  float* bias = smem + S::kBias;
  auto row = [&](int base, int token) { return smem + base + token * S::kRow; };
  const Window win(p, threadIdx.x / kSplit);
  const int part = threadIdx.x % kSplit, me = win.token;
  const T* qkv = static_cast<const T*>(p.qkv);
  const int side = 2 * win.w - 1, bins = side * side, dim = p.heads * p.head_dim;
  const bool active = me < win.tokens;
  for (int i = threadIdx.x; i < bins; i += blockDim.x) bias[i] = p.table[win.head * bins + i];
  {  // the token's four rows, one per thread; zeros for a token past the window
    const int base = part == 0 ? S::kQ : part == 1 ? S::kK : part == 2 ? S::kV : S::kDout;
    float* dst = row(base, me);
    if (!active) {
#pragma unroll
      for (int d = 0; d < kHD; ++d) dst[d] = 0.f;
    } else if (part < 3) {
      load_row<T, kHD>(qkv, p, win.token_offset, part, win.head, dst);
    } else {
      const T* src = static_cast<const T*>(p.dout) + win.token_offset * dim + win.head * p.head_dim;
#pragma unroll
      for (int d = 0; d < kHD; ++d) dst[d] = d < p.head_dim ? to_float(src[d]) : 0.f;
    }
  }
  __syncthreads();

  T* d_token = static_cast<T*>(p.out) + win.token_offset * 3 * dim + win.head * p.head_dim;  // q slot
  {  // every token, a zero row past the window included: the shuffles need all four lanes
    // P's row, as the forward computes it, over this thread's keys
    const float* q = row(S::kQ, me);
    const float* g = row(S::kDout, me);
    float prob[kKeys], dp[kKeys];
    float top = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < kKeys; ++jj) {
      const int j = jj * kSplit + part;
      prob[jj] = -INFINITY, dp[jj] = 0.f;
      if (j < win.tokens) {
        const int ki = j / win.w, kj = j % win.w;
        const float s = dot_row<kHD>(q, row(S::kK, j)) * p.scale +
                        bias[(win.ti - ki + win.w - 1) * side + win.tj - kj + win.w - 1];
        prob[jj] = win.masked(p, ki, kj) ? -INFINITY : s;
        top = fmaxf(top, prob[jj]);
        dp[jj] = dot_row<kHD>(g, row(S::kV, j));
      }
    }
    top = token_max(top);
    float total = 0.f;
#pragma unroll
    for (int jj = 0; jj < kKeys; ++jj)
      if (jj * kSplit + part < win.tokens) prob[jj] = expf(prob[jj] - top), total += prob[jj];
    const float inv = 1.f / token_sum(total);
    float D = 0.f;  // sum_j P_ij dP_ij
#pragma unroll
    for (int jj = 0; jj < kKeys; ++jj)
      if (jj * kSplit + part < win.tokens) prob[jj] *= inv, D += prob[jj] * dp[jj];
    D = token_sum(D);
    // dS_ij = P_ij (dP_ij - D_i); dq_i = scale sum_j dS_ij k_j
    float dq[kHD] = {};
#pragma unroll
    for (int jj = 0; jj < kKeys; ++jj) {
      const int j = jj * kSplit + part;
      if (j < win.tokens) {
        const float ds = prob[jj] * (dp[jj] - D);
        if (active) smem[S::kP + me * S::kMatrixRow + j] = prob[jj], smem[S::kDs + me * S::kMatrixRow + j] = ds;
        const float4* k = reinterpret_cast<const float4*>(row(S::kK, j));
#pragma unroll
        for (int d = 0; d < kHD / 4; ++d) {
          const float4 kd = k[d];
          dq[4 * d] += ds * kd.x, dq[4 * d + 1] += ds * kd.y, dq[4 * d + 2] += ds * kd.z, dq[4 * d + 3] += ds * kd.w;
        }
      }
    }
#pragma unroll
    for (int d = 0; d < kHD; ++d) dq[d] = token_sum(dq[d]);
#pragma unroll
    for (int d = 0; d < kHD; ++d)  // each of the four threads stores a quarter of the row
      if (active && d % kSplit == part && d < p.head_dim) d_token[d] = from_float<T>(dq[d] * p.scale);
  }
  __syncthreads();

  // Column phase, token j = me, head_dim quarter [d0, d0 + kHD / 4):
  // dv_j = sum_i P_ij dO_i, dk_j = scale sum_i dS_ij q_i
  if (active) {
    constexpr int kQuarter = kHD / kSplit;
    const int d0 = part * kQuarter;
    float dv[kQuarter] = {}, dk[kQuarter] = {};
    for (int i = 0; i < win.tokens; ++i) {
      const float pij = smem[S::kP + i * S::kMatrixRow + me], ds = smem[S::kDs + i * S::kMatrixRow + me];
      const float4* gi = reinterpret_cast<const float4*>(row(S::kDout, i) + d0);
      const float4* qi = reinterpret_cast<const float4*>(row(S::kQ, i) + d0);
#pragma unroll
      for (int d = 0; d < kQuarter / 4; ++d) {
        const float4 gd = gi[d], qd = qi[d];
        dv[4 * d] += pij * gd.x, dv[4 * d + 1] += pij * gd.y, dv[4 * d + 2] += pij * gd.z, dv[4 * d + 3] += pij * gd.w;
        dk[4 * d] += ds * qd.x, dk[4 * d + 1] += ds * qd.y, dk[4 * d + 2] += ds * qd.z, dk[4 * d + 3] += ds * qd.w;
      }
    }
#pragma unroll
    for (int d = 0; d < kQuarter; ++d) {
      if (d0 + d < p.head_dim) {
        d_token[dim + d0 + d] = from_float<T>(dk[d] * p.scale);
        d_token[2 * dim + d0 + d] = from_float<T>(dv[d]);
      }
    }
  }
  // d table: bin (a, c) holds the pairs with ti - ki = a - (w - 1) and tj - kj = c - (w - 1)
  float* parts = p.dtable_parts + static_cast<int64_t>(blockIdx.x) * bins;
  for (int bin = threadIdx.x; bin < bins; bin += blockDim.x) {
    const int di = bin / side - (win.w - 1), dj = bin % side - (win.w - 1);
    float sum = 0.f;
    for (int ti = max(0, di); ti < min(win.w, win.w + di); ++ti)
      for (int tj = max(0, dj); tj < min(win.w, win.w + dj); ++tj)
        sum += smem[S::kDs + (ti * win.w + tj) * S::kMatrixRow + (ti - di) * win.w + tj - dj];
    parts[bin] = sum;
  }
}

}  // namespace
}  // namespace attention

void window_attention_bwd_launch(const WindowAttentionParams& p, cudaStream_t stream) {
  using namespace attention;
  launch_windows(
      p, kBwdThreads, stream,
      [](auto t, auto head_dim) { return window_attention_bwd_kernel<decltype(t), decltype(head_dim)::value>; },
      [](auto head_dim) { return BwdSmem<decltype(head_dim)::value>::kBytes; });
}

}  // namespace mambaic
