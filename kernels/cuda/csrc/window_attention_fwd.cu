// Window attention forward (the algorithm: window_attention.cuh).

#include "window_attention.cuh"

namespace mambaic {
namespace attention {
namespace {

template <typename T, int kHD>
__global__ void __launch_bounds__(kTokens) window_attention_fwd_kernel(WindowAttentionParams p) {
  __shared__ float keys[kTokens][kHD + 1], values[kTokens][kHD + 1], bias[kBins];
  const Window win(p);
  const T* qkv = static_cast<const T*>(p.qkv);
  const int side = 2 * win.w - 1, bins = side * side;
  for (int i = threadIdx.x; i < bins; i += blockDim.x) bias[i] = p.table[win.head * bins + i];
  const bool active = threadIdx.x < win.tokens;
  float q[kHD];
  if (active) {
    load_row<T, kHD>(qkv, p, win.token_offset, 0, win.head, q);
    load_row<T, kHD>(qkv, p, win.token_offset, 1, win.head, keys[threadIdx.x]);
    load_row<T, kHD>(qkv, p, win.token_offset, 2, win.head, values[threadIdx.x]);
  }
  __syncthreads();
  if (!active) return;

  float score[kTokens];  // q . k_j * scale + bias, then exp(score - max)
  float top = -INFINITY;
#pragma unroll
  for (int j = 0; j < kTokens; ++j) {
    if (j < win.tokens) {
      const int ki = j / win.w, kj = j % win.w;
      float dot = 0.f;
#pragma unroll
      for (int d = 0; d < kHD; ++d) dot += d < p.head_dim ? q[d] * keys[j][d] : 0.f;
      const float s = dot * p.scale + bias[(win.ti - ki + win.w - 1) * side + win.tj - kj + win.w - 1];
      score[j] = win.masked(p, ki, kj) ? -INFINITY : s;
      top = fmaxf(top, score[j]);
    }
  }
  float total = 0.f, o[kHD] = {};
#pragma unroll
  for (int j = 0; j < kTokens; ++j) {
    if (j < win.tokens) {
      const float e = expf(score[j] - top);  // the token itself is never masked: top is finite
      total += e;
#pragma unroll
      for (int d = 0; d < kHD; ++d) o[d] += e * values[j][d];
    }
  }
  const int dim = p.heads * p.head_dim;
  T* out = static_cast<T*>(p.out) + win.token_offset * dim + win.head * p.head_dim;
  const float inv = 1.f / total;
#pragma unroll
  for (int d = 0; d < kHD; ++d)
    if (d < p.head_dim) out[d] = from_float<T>(o[d] * inv);
}

template <typename T>
void launch(const WindowAttentionParams& p, unsigned blocks, cudaStream_t stream) {
  if (p.head_dim <= 16)
    window_attention_fwd_kernel<T, 16><<<blocks, kTokens, 0, stream>>>(p);
  else
    window_attention_fwd_kernel<T, kMaxHeadDim><<<blocks, kTokens, 0, stream>>>(p);
}

}  // namespace
}  // namespace attention

const char* window_attention_unsupported(const WindowAttentionParams& p) {
  if (p.window < 1 || p.window > kMaxWindow) return "the cuda window_attention kernels take window <= 8";
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim) return "the cuda window_attention kernels take head_dim <= 32";
  if (p.height % p.window || p.width % p.window) return "H and W must be multiples of the window";
  if (p.batch * (p.height / p.window) * (p.width / p.window) * p.heads > (int64_t{1} << 31) - 1)
    return "more (window, head) pairs than one launch takes (2^31 - 1 blocks)";
  return "";
}

void window_attention_fwd_launch(const WindowAttentionParams& p, cudaStream_t stream) {
  const int64_t blocks = p.batch * (p.height / p.window) * (p.width / p.window) * p.heads;
  if (blocks == 0) return;
  const auto n = static_cast<unsigned>(blocks);
  with_element(p.element, [&](auto t) { attention::launch<decltype(t)>(p, n, stream); });
}

}  // namespace mambaic
