// Window attention backward (the algorithm: window_attention.cuh).

#include "window_attention.cuh"

namespace mambaic {
namespace attention {
namespace {

// Shared memory of one block, in floats: the window's q, dO, k, v rows (padded by one), the
// (token x token) P-then-dS matrix (rows padded by one: thread i writing row i, thread j reading
// column j, both conflict-free) and the head's bias table.
template <int kHD> struct BwdSmem {
  static constexpr int kRow = kHD + 1, kMatrixRow = kTokens + 1;
  static constexpr int kQ = 0, kDout = kQ + kTokens * kRow, kK = kDout + kTokens * kRow, kV = kK + kTokens * kRow,
                       kMatrix = kV + kTokens * kRow, kBias = kMatrix + kTokens * kMatrixRow, kFloats = kBias + kBins;
  static constexpr size_t kBytes = kFloats * sizeof(float);
};

template <typename T, int kHD>
__global__ void __launch_bounds__(kTokens) window_attention_bwd_kernel(WindowAttentionParams p) {
  using S = BwdSmem<kHD>;
  extern __shared__ float smem[];
  float* bias = smem + S::kBias;
  float* matrix = smem + S::kMatrix;  // P, then dS
  auto row = [&](int base, int token) { return smem + base + token * S::kRow; };
  const Window win(p, threadIdx.x);
  const T* qkv = static_cast<const T*>(p.qkv);
  const T* dout = static_cast<const T*>(p.dout);
  T* dqkv = static_cast<T*>(p.out);
  const int side = 2 * win.w - 1, bins = side * side, dim = p.heads * p.head_dim;
  const int me = threadIdx.x;
  const bool active = me < win.tokens;
  for (int i = me; i < bins; i += blockDim.x) bias[i] = p.table[win.head * bins + i];
  float q[kHD], g[kHD];  // this token's q and dO rows
  if (active) {
    load_row<T, kHD>(qkv, p, win.token_offset, 0, win.head, q);
    const T* src = dout + win.token_offset * dim + win.head * p.head_dim;
#pragma unroll
    for (int d = 0; d < kHD; ++d) g[d] = d < p.head_dim ? to_float(src[d]) : 0.f;
#pragma unroll
    for (int d = 0; d < kHD; ++d) row(S::kQ, me)[d] = q[d], row(S::kDout, me)[d] = g[d];
    load_row<T, kHD>(qkv, p, win.token_offset, 1, win.head, row(S::kK, me));
    load_row<T, kHD>(qkv, p, win.token_offset, 2, win.head, row(S::kV, me));
  }
  __syncthreads();

  // P's row i, as the forward computes it; and D_i = sum_j P_ij dP_ij
  float prob[kTokens];
  float D = 0.f;
  if (active) {
    float top = -INFINITY;
#pragma unroll
    for (int j = 0; j < kTokens; ++j) {
      if (j < win.tokens) {
        const int ki = j / win.w, kj = j % win.w;
        const float* k = row(S::kK, j);
        float dot = 0.f;
#pragma unroll
        for (int d = 0; d < kHD; ++d) dot += q[d] * k[d];
        const float s = dot * p.scale + bias[(win.ti - ki + win.w - 1) * side + win.tj - kj + win.w - 1];
        prob[j] = win.masked(p, ki, kj) ? -INFINITY : s;
        top = fmaxf(top, prob[j]);
      }
    }
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < kTokens; ++j)
      if (j < win.tokens) prob[j] = expf(prob[j] - top), total += prob[j];
    const float inv = 1.f / total;
#pragma unroll
    for (int j = 0; j < kTokens; ++j) {
      if (j < win.tokens) {
        prob[j] *= inv;
        matrix[me * S::kMatrixRow + j] = prob[j];
        const float* v = row(S::kV, j);
        float dp = 0.f;
#pragma unroll
        for (int d = 0; d < kHD; ++d) dp += g[d] * v[d];
        D += prob[j] * dp;
      }
    }
  }
  __syncthreads();

  T* d_token = dqkv + win.token_offset * 3 * dim + win.head * p.head_dim;  // this token's q slot
  if (active) {  // dv_j = sum_i P_ij dO_i, thread j = me
    float dv[kHD] = {};
    for (int i = 0; i < win.tokens; ++i) {
      const float pij = matrix[i * S::kMatrixRow + me];
      const float* gi = row(S::kDout, i);
#pragma unroll
      for (int d = 0; d < kHD; ++d) dv[d] += pij * gi[d];
    }
#pragma unroll
    for (int d = 0; d < kHD; ++d)
      if (d < p.head_dim) d_token[2 * dim + d] = from_float<T>(dv[d]);
  }
  __syncthreads();  // P is read: the matrix takes dS

  if (active) {  // dS_ij = P_ij (dP_ij - D_i); dq_i = scale sum_j dS_ij k_j
    float dq[kHD] = {};
#pragma unroll
    for (int j = 0; j < kTokens; ++j) {
      if (j < win.tokens) {
        const float* v = row(S::kV, j);
        const float* k = row(S::kK, j);
        float dp = 0.f;
#pragma unroll
        for (int d = 0; d < kHD; ++d) dp += g[d] * v[d];
        const float ds = prob[j] * (dp - D);
        matrix[me * S::kMatrixRow + j] = ds;
#pragma unroll
        for (int d = 0; d < kHD; ++d) dq[d] += ds * k[d];
      }
    }
#pragma unroll
    for (int d = 0; d < kHD; ++d)
      if (d < p.head_dim) d_token[d] = from_float<T>(dq[d] * p.scale);
  }
  __syncthreads();

  if (active) {  // dk_j = scale sum_i dS_ij q_i, thread j = me
    float dk[kHD] = {};
    for (int i = 0; i < win.tokens; ++i) {
      const float ds = matrix[i * S::kMatrixRow + me];
      const float* qi = row(S::kQ, i);
#pragma unroll
      for (int d = 0; d < kHD; ++d) dk[d] += ds * qi[d];
    }
#pragma unroll
    for (int d = 0; d < kHD; ++d)
      if (d < p.head_dim) d_token[dim + d] = from_float<T>(dk[d] * p.scale);
  }
  // d table: bin (a, c) holds the pairs with ti - ki = a - (w - 1) and tj - kj = c - (w - 1)
  float* part = p.dtable_parts + static_cast<int64_t>(blockIdx.x) * bins;
  for (int bin = me; bin < bins; bin += blockDim.x) {
    const int di = bin / side - (win.w - 1), dj = bin % side - (win.w - 1);
    float sum = 0.f;
    for (int ti = max(0, di); ti < min(win.w, win.w + di); ++ti)
      for (int tj = max(0, dj); tj < min(win.w, win.w + dj); ++tj)
        sum += matrix[(ti * win.w + tj) * S::kMatrixRow + (ti - di) * win.w + tj - dj];
    part[bin] = sum;
  }
}

template <typename T, int kHD>
void launch_with(const WindowAttentionParams& p, unsigned blocks, cudaStream_t stream) {
  auto kernel = window_attention_bwd_kernel<T, kHD>;
  static const cudaError_t allowed =  // once per instantiation: above the 48 KiB default
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, BwdSmem<kHD>::kBytes);
  (void)allowed;  // a failure shows as the launch's error
  kernel<<<blocks, kTokens, BwdSmem<kHD>::kBytes, stream>>>(p);
}

template <typename T>
void launch(const WindowAttentionParams& p, unsigned blocks, cudaStream_t stream) {
  if (p.head_dim <= 16)
    launch_with<T, 16>(p, blocks, stream);
  else
    launch_with<T, kMaxHeadDim>(p, blocks, stream);
}

}  // namespace
}  // namespace attention

void window_attention_bwd_launch(const WindowAttentionParams& p, cudaStream_t stream) {
  const int64_t blocks = p.batch * (p.height / p.window) * (p.width / p.window) * p.heads;
  if (blocks == 0) return;
  const auto n = static_cast<unsigned>(blocks);
  with_element(p.element, [&](auto t) { attention::launch<decltype(t)>(p, n, stream); });
}

}  // namespace mambaic
