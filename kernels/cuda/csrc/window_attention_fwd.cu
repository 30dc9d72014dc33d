// Window attention forward (the algorithm: window_attention.cuh).

#include "window_attention.cuh"

namespace mambaic {
namespace attention {
namespace {

constexpr int kFwdThreads = kTokens * kSplit;  // 256

// Thread t serves query token t / 4 and keys j = t % 4, t % 4 + 4, ...: 16 scores in registers, not
// 64, so that a block holds 256 threads with few registers each; the four threads of a token are
// adjacent lanes and combine their max, sum and output rows with shuffles in a fixed order.
template <typename T, int kHD>
__global__ void __launch_bounds__(kFwdThreads, kHD <= 16 ? 3 : 2) window_attention_fwd_kernel(WindowAttentionParams p) {
  static_assert(kHD % 4 == 0, "rows are read as float4");
  constexpr int kKeys = kTokens / kSplit;
  __shared__ __align__(16) float keys[kTokens][kHD], values[kTokens][kHD];
  __shared__ float bias[kBins];
  const Window win(p, threadIdx.x / kSplit);
  const int part = threadIdx.x % kSplit;
  const T* qkv = static_cast<const T*>(p.qkv);
  const int side = 2 * win.w - 1, bins = side * side;
  for (int i = threadIdx.x; i < bins; i += blockDim.x) bias[i] = p.table[win.head * bins + i];
  const bool active = win.token < win.tokens;
  float q[kHD];
  if (active) {
    load_row<T, kHD>(qkv, p, win.token_offset, 0, win.head, q);
    if (part == 0) load_row<T, kHD>(qkv, p, win.token_offset, 1, win.head, keys[win.token]);
    if (part == 1) load_row<T, kHD>(qkv, p, win.token_offset, 2, win.head, values[win.token]);
  } else {
#pragma unroll
    for (int d = 0; d < kHD; ++d) q[d] = 0.f;  // a token past the window: computed, never stored
  }
  __syncthreads();

  float score[kKeys];
  float top = -INFINITY;
#pragma unroll
  for (int jj = 0; jj < kKeys; ++jj) {
    const int j = jj * kSplit + part;
    score[jj] = -INFINITY;
    if (j < win.tokens) {
      const int ki = j / win.w, kj = j % win.w;
      const float4* k = reinterpret_cast<const float4*>(keys[j]);
      float dot = 0.f;
#pragma unroll
      for (int d = 0; d < kHD / 4; ++d) {
        const float4 kd = k[d];
        dot += q[4 * d] * kd.x + q[4 * d + 1] * kd.y + q[4 * d + 2] * kd.z + q[4 * d + 3] * kd.w;
      }
      const float s = dot * p.scale + bias[(win.ti - ki + win.w - 1) * side + win.tj - kj + win.w - 1];
      score[jj] = win.masked(p, ki, kj) ? -INFINITY : s;
      top = fmaxf(top, score[jj]);
    }
  }
  top = token_max(top);  // the token sees itself: finite
  float total = 0.f, o[kHD] = {};
#pragma unroll
  for (int jj = 0; jj < kKeys; ++jj) {
    const int j = jj * kSplit + part;
    if (j < win.tokens) {
      const float e = expf(score[jj] - top);
      total += e;
      const float4* v = reinterpret_cast<const float4*>(values[j]);
#pragma unroll
      for (int d = 0; d < kHD / 4; ++d) {
        const float4 vd = v[d];
        o[4 * d] += e * vd.x, o[4 * d + 1] += e * vd.y, o[4 * d + 2] += e * vd.z, o[4 * d + 3] += e * vd.w;
      }
    }
  }
  total = token_sum(total);
#pragma unroll
  for (int d = 0; d < kHD; ++d) o[d] = token_sum(o[d]);
  if (!active) return;
  const int dim = p.heads * p.head_dim;
  T* out = static_cast<T*>(p.out) + win.token_offset * dim + win.head * p.head_dim;
  const float inv = 1.f / total;
#pragma unroll
  for (int d = 0; d < kHD; ++d)  // each of the four threads stores a quarter of the row
    if (d % kSplit == part && d < p.head_dim) out[d] = from_float<T>(o[d] * inv);
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
  using namespace attention;
  launch_windows(
      p, kFwdThreads, stream,
      [](auto t, auto head_dim) { return window_attention_fwd_kernel<decltype(t), decltype(head_dim)::value>; },
      [](auto) { return size_t{0}; });
}

}  // namespace mambaic
