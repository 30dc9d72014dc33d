// Window attention forward on tensor cores (the semantics: window_attention.cuh), the products by
// mma.sync with the 3xTF32 split (mma_tf32.cuh).
//
// Warp w, query rows 16w .. 16w+15: S = scale Q K^T + bias (8 key tiles of 16 x 8, k-steps of 8 over
// head_dim), the row softmax in registers (each row in the four lanes of a group), O = P V with P's
// C tiles used as A tiles directly (no shared-memory round trip), O divided by the row sums at the
// end. Every sum has one fixed order: the same bits from run to run.

#include "window_attention.cuh"

namespace mambaic {
namespace attention {
namespace {

// Exact float32 path of a block holding a non-finite value: thread i computes query row i as the
// reference does (max, then exponentials, sums and products over the keys in order).
template <typename T, int kHD, int kRow>
__device__ void exact_forward(const WindowAttentionParams& p, const MmaWindow& win, const TokenTable& tok,
                              const ScoreRule& rule, const float* q_s, const float* k_s, const float* v_s, T* out,
                              int64_t channels, int channel0) {
  const int i = threadIdx.x;
  if (i >= win.tokens) return;
  const float* q = q_s + i * kRow;
  float top = -INFINITY;
  for (int j = 0; j < win.tokens; ++j)
    top = fmaxf(top, exact_score(q, k_s + j * kRow, p.head_dim, rule, tok.code[i], tok.code[j]));
  float total = 0.f, o[kHD] = {};
  for (int j = 0; j < win.tokens; ++j) {
    const float e = expf(exact_score(q, k_s + j * kRow, p.head_dim, rule, tok.code[i], tok.code[j]) - top);
    total += e;
#pragma unroll
    for (int d = 0; d < kHD; ++d) o[d] = fmaf(e, v_s[j * kRow + d], o[d]);  // a masked key: 0 v
  }
  const float inv = 1.f / total;
  T* row = out + tok.offset[i] * channels + channel0;
#pragma unroll
  for (int d = 0; d < kHD; ++d)
    if (d < p.head_dim) row[d] = from_float<T>(o[d] * inv);
}

template <typename T, int kHD>
__global__ void __launch_bounds__(kMmaThreads) window_attention_fwd_kernel(const WindowAttentionParams p) {
  static_assert(kHD % 8 == 0, "head_dim is padded to whole k-steps and column tiles");
  // Row stride: kHD + 4 == 4 (mod 8) puts the A loads of Q and the B loads of K (8 rows g apart) in
  // distinct banks, and kHD + 4 == 4 (mod 16) the paired B loads of V (rows 2t, 2t + 1).
  constexpr int kRow = kHD + 4, kTiles = kHD / 8;
  __shared__ __align__(16) float q_s[kTokens * kRow], k_s[kTokens * kRow], v_s[kTokens * kRow];
  __shared__ float bias_s[kBins];
  __shared__ TokenTable tok;
  const MmaWindow win(p);
  win.describe_tokens(p, tok);
  win.load_bias(p, bias_s);
  __syncthreads();

  const T* qkv = static_cast<const T*>(p.qkv);
  const int dim = p.heads * p.head_dim, channel0 = win.head * p.head_dim;
  StagedRows<T, kHD> q, k, v;
  q.load(qkv, 3 * dim, channel0, p.head_dim, tok, win.tokens);
  k.load(qkv, 3 * dim, dim + channel0, p.head_dim, tok, win.tokens);
  v.load(qkv, 3 * dim, 2 * dim + channel0, p.head_dim, tok, win.tokens);
  const bool ok = q.template store<kRow>(q_s) & k.template store<kRow>(k_s) & v.template store<kRow>(v_s);
  const bool exact = __syncthreads_or(!ok) || !mma::kTensorCores;
  const ScoreRule rule(bias_s, p.scale, win.w);
  T* out = static_cast<T*>(p.out);
  if (exact) return exact_forward<T, kHD, kRow>(p, win, tok, rule, q_s, k_s, v_s, out, dim, channel0);

  const int r0 = threadIdx.x / 32 * 16;
  if (r0 >= win.tokens) return;  // the warp's rows are all padding
  const mma::Lane l(threadIdx.x % 32);
  float s[8][4];
  warp_scores<kHD, kRow, kRow>(q_s, k_s, tok, rule, r0, win.tokens, p.head_dim, l, s);
  float sum0, sum1;
  softmax_rows(s, sum0, sum1);

  // O = exp(S - max) V: key tile nt is the k-step, its C tile the A tile (keys 2t, 2t + 1 as columns t, t + 4)
  const int key_tiles = (win.tokens + 7) / 8, d_tiles = (p.head_dim + 7) / 8;
  float o[kTiles][4] = {};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    if (nt >= key_tiles) continue;
    const mma::FragA a = mma::a_from_c(s[nt]);
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt)
      if (dt < d_tiles) mma::mma3(o[dt], a, mma::load_b_kn_paired<kRow>(v_s, 8 * nt, 8 * dt, l));
  }
  store_rows<T, kTiles>(out, dim, channel0, p.head_dim, tok, win.tokens, r0, l, o, 1.f / sum0, 1.f / sum1);
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
      p, kMmaThreads, stream,
      [](auto t, auto head_dim) { return window_attention_fwd_kernel<decltype(t), decltype(head_dim)::value>; },
      [](auto) { return size_t{0}; });
}

}  // namespace mambaic
