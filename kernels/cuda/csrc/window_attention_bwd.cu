// Window attention backward on tensor cores (the semantics: window_attention.cuh), the products by
// mma.sync with the 3xTF32 split (mma_tf32.cuh).
//
// Row phase, warp w and query rows 16w .. 16w+15, as the forward: P again (no statistics saved),
// dP = dO V^T, D_i = sum_j P_ij dP_ij, dS = P (dP - D), dq = scale dS K (dS's C tiles as A tiles).
// P and dS go to shared memory. Column phase, warp w and key rows 16w .. 16w+15: dk = scale dS^T Q
// and dv = P^T dO, the transposes read as A tiles from shared memory. Every element of d qkv has
// one owner (no atomics); d table: thread b sums dS over the token pairs of bin b, one partial per
// block. Every sum has one fixed order: the same bits from run to run.

#include "window_attention.cuh"

namespace mambaic {
namespace attention {
namespace {

// Shared memory of one block, in floats. Row strides, so that every fragment access is free of bank
// conflicts but one (the A tiles of Q and dO in the row phase, once per warp, two-way):
//   Q, dO: B tiles of the column phase read rows t and t + 4: kRowQ == 8 (mod 16);
//   K, V: B tiles read rows g (S, dP) or 2t and 2t + 1 (dq): kRowK == 4 (mod 16);
//   P, dS: float2 stores of C tiles (half warps, rows g) and transposed A tiles (rows t): 72 == 8 (mod 32).
template <int kHD> struct MmaBwdSmem {
  static constexpr int kRowQ = kHD + 8, kRowK = kHD + 4, kMatrixRow = kTokens + 8;
  static constexpr int kQ = 0, kDout = kQ + kTokens * kRowQ, kK = kDout + kTokens * kRowQ, kV = kK + kTokens * kRowK,
                       kP = kV + kTokens * kRowK, kDs = kP + kTokens * kMatrixRow, kFloats = kDs + kTokens * kMatrixRow;
  static constexpr size_t kBytes = kFloats * sizeof(float);
};

// Row phase of the warp owning query rows r0 .. r0+15 (r0 < tokens).
template <typename T, int kHD>
__device__ void bwd_rows(const WindowAttentionParams& p, const MmaWindow& win, const TokenTable& tok,
                         const ScoreRule& rule, float* smem, T* dqkv, int dim, int channel0, int r0, mma::Lane l) {
  using S = MmaBwdSmem<kHD>;
  constexpr int kTiles = kHD / 8;
  const int key_tiles = (win.tokens + 7) / 8, k_steps = (p.head_dim + 7) / 8;
  float prob[8][4];
  warp_scores<kHD, S::kRowQ, S::kRowK>(smem + S::kQ, smem + S::kK, tok, rule, r0, win.tokens, p.head_dim, l, prob);
  float sum0, sum1;
  softmax_rows(prob, sum0, sum1);
  const float inv0 = 1.f / sum0, inv1 = 1.f / sum1;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) prob[nt][0] *= inv0, prob[nt][1] *= inv0, prob[nt][2] *= inv1, prob[nt][3] *= inv1;

  float ds[8][4];  // dP, then dS
  {
    mma::FragA ga[kTiles];
#pragma unroll
    for (int kt = 0; kt < kTiles; ++kt)
      if (kt < k_steps) ga[kt] = mma::load_a<S::kRowQ>(smem + S::kDout, r0, 8 * kt, l);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      ds[nt][0] = ds[nt][1] = ds[nt][2] = ds[nt][3] = 0.f;
      if (nt >= key_tiles) continue;
#pragma unroll
      for (int kt = 0; kt < kTiles; ++kt)
        if (kt < k_steps) mma::mma3(ds[nt], ga[kt], mma::load_b_nk<S::kRowK>(smem + S::kV, 8 * nt, 8 * kt, l));
    }
  }
  float D0 = 0.f, D1 = 0.f;  // sum_j P_ij dP_ij of rows g and g + 8, in the order of softmax_rows' sums
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    D0 += prob[nt][0] * ds[nt][0], D0 += prob[nt][1] * ds[nt][1];
    D1 += prob[nt][2] * ds[nt][2], D1 += prob[nt][3] * ds[nt][3];
  }
  D0 = token_sum(D0), D1 = token_sum(D1);
  // dS = P (dP - D); P and dS of rows past the window are zero, so that the column phase may read them
  const bool pad0 = r0 + l.g >= win.tokens, pad1 = r0 + l.g + 8 >= win.tokens;
  float* p_s = smem + S::kP;
  float* ds_s = smem + S::kDs;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    ds[nt][0] = pad0 ? 0.f : prob[nt][0] * (ds[nt][0] - D0), ds[nt][1] = pad0 ? 0.f : prob[nt][1] * (ds[nt][1] - D0);
    ds[nt][2] = pad1 ? 0.f : prob[nt][2] * (ds[nt][2] - D1), ds[nt][3] = pad1 ? 0.f : prob[nt][3] * (ds[nt][3] - D1);
    const int at = (r0 + l.g) * S::kMatrixRow + 8 * nt + 2 * l.t;  // C tile: (g, 2t), (g, 2t + 1); 8 rows below
    *reinterpret_cast<float2*>(p_s + at) = pad0 ? make_float2(0.f, 0.f) : make_float2(prob[nt][0], prob[nt][1]);
    *reinterpret_cast<float2*>(p_s + at + 8 * S::kMatrixRow) =
        pad1 ? make_float2(0.f, 0.f) : make_float2(prob[nt][2], prob[nt][3]);
    *reinterpret_cast<float2*>(ds_s + at) = make_float2(ds[nt][0], ds[nt][1]);
    *reinterpret_cast<float2*>(ds_s + at + 8 * S::kMatrixRow) = make_float2(ds[nt][2], ds[nt][3]);
  }

  // dq = scale dS K: key tile nt is the k-step, dS's C tile its A tile
  float dq[kTiles][4] = {};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    if (nt >= key_tiles) continue;
    const mma::FragA a = mma::a_from_c(ds[nt]);
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt)
      if (dt < k_steps) mma::mma3(dq[dt], a, mma::load_b_kn_paired<S::kRowK>(smem + S::kK, 8 * nt, 8 * dt, l));
  }
  store_rows<T, kTiles>(dqkv, 3 * dim, channel0, p.head_dim, tok, win.tokens, r0, l, dq, p.scale, p.scale);
}

// Column phase of the warp owning key rows j0 .. j0+15 (j0 < tokens): dk = scale dS^T Q, dv = P^T dO,
// k-steps over the query tiles of the window.
template <typename T, int kHD>
__device__ void bwd_columns(const WindowAttentionParams& p, const MmaWindow& win, const TokenTable& tok,
                            const float* smem, T* dqkv, int dim, int channel0, int j0, mma::Lane l) {
  using S = MmaBwdSmem<kHD>;
  constexpr int kTiles = kHD / 8;
  const int query_tiles = (win.tokens + 7) / 8, d_tiles = (p.head_dim + 7) / 8;
  float dk[kTiles][4] = {}, dv[kTiles][4] = {};
#pragma unroll
  for (int it = 0; it < 8; ++it) {
    if (it >= query_tiles) continue;
    const mma::FragA pa = mma::load_a_transposed<S::kMatrixRow>(smem + S::kP, j0, 8 * it, l);
    const mma::FragA sa = mma::load_a_transposed<S::kMatrixRow>(smem + S::kDs, j0, 8 * it, l);
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt) {
      if (dt >= d_tiles) continue;
      mma::mma3(dv[dt], pa, mma::load_b_kn<S::kRowQ>(smem + S::kDout, 8 * it, 8 * dt, l));
      mma::mma3(dk[dt], sa, mma::load_b_kn<S::kRowQ>(smem + S::kQ, 8 * it, 8 * dt, l));
    }
  }
  store_rows<T, kTiles>(dqkv, 3 * dim, dim + channel0, p.head_dim, tok, win.tokens, j0, l, dk, p.scale, p.scale);
  store_rows<T, kTiles>(dqkv, 3 * dim, 2 * dim + channel0, p.head_dim, tok, win.tokens, j0, l, dv, 1.f, 1.f);
}

// Exact float32 path of a block holding a non-finite value: thread i takes query row i (P, dP, dS to
// shared memory, dq), then key row i (dk, dv); sums in token and channel order.
template <typename T, int kHD>
__device__ void exact_backward(const WindowAttentionParams& p, const MmaWindow& win, const TokenTable& tok,
                               const ScoreRule& rule, float* smem, T* dqkv, int dim, int channel0) {
  using S = MmaBwdSmem<kHD>;
  const int n = win.tokens, hd = p.head_dim, me = threadIdx.x;
  const float *q_s = smem + S::kQ, *g_s = smem + S::kDout, *k_s = smem + S::kK, *v_s = smem + S::kV;
  float *p_s = smem + S::kP, *ds_s = smem + S::kDs;
  if (me < n) {
    float *prob = p_s + me * S::kMatrixRow, *ds = ds_s + me * S::kMatrixRow;
    const float *q = q_s + me * S::kRowQ, *g = g_s + me * S::kRowQ;
    float top = -INFINITY;
    for (int j = 0; j < n; ++j) {
      prob[j] = exact_score(q, k_s + j * S::kRowK, hd, rule, tok.code[me], tok.code[j]);
      top = fmaxf(top, prob[j]);
    }
    float total = 0.f;
    for (int j = 0; j < n; ++j) prob[j] = expf(prob[j] - top), total += prob[j];
    const float inv = 1.f / total;
    float D = 0.f;
    for (int j = 0; j < n; ++j) {
      float dp = 0.f;
      for (int d = 0; d < hd; ++d) dp = fmaf(g[d], v_s[j * S::kRowK + d], dp);
      prob[j] *= inv, ds[j] = dp, D = fmaf(prob[j], dp, D);
    }
    for (int j = 0; j < n; ++j) ds[j] = prob[j] * (ds[j] - D);
    T* row = dqkv + tok.offset[me] * 3 * dim + channel0;
    for (int d = 0; d < hd; ++d) {
      float dq = 0.f;
      for (int j = 0; j < n; ++j) dq = fmaf(ds[j], k_s[j * S::kRowK + d], dq);
      row[d] = from_float<T>(dq * p.scale);
    }
  }
  __syncthreads();
  if (me < n) {
    T* row = dqkv + tok.offset[me] * 3 * dim + channel0;
    for (int d = 0; d < hd; ++d) {
      float dk = 0.f, dv = 0.f;
      for (int i = 0; i < n; ++i) {
        dk = fmaf(ds_s[i * S::kMatrixRow + me], q_s[i * S::kRowQ + d], dk);
        dv = fmaf(p_s[i * S::kMatrixRow + me], g_s[i * S::kRowQ + d], dv);
      }
      row[dim + d] = from_float<T>(dk * p.scale);
      row[2 * dim + d] = from_float<T>(dv);
    }
  }
}

// d table partial of this block: bin (a, c) sums dS over the pairs with ti - ki = a - (w - 1) and
// tj - kj = c - (w - 1), in (ti, tj) order; one partial per block, as the caller sums them.
template <int kMatrixRow>
__device__ void dtable_partials(const WindowAttentionParams& p, const MmaWindow& win, const float* ds_s) {
  float* parts = p.dtable_parts + static_cast<int64_t>(blockIdx.x) * win.bins;
  const int w = win.w;
  for (int bin = threadIdx.x; bin < win.bins; bin += kMmaThreads) {
    const int di = bin / win.side - (w - 1), dj = bin % win.side - (w - 1);
    float sum = 0.f;
    for (int ti = max(0, di); ti < min(w, w + di); ++ti)
      for (int tj = max(0, dj); tj < min(w, w + dj); ++tj)
        sum += ds_s[(ti * w + tj) * kMatrixRow + (ti - di) * w + tj - dj];
    parts[bin] = sum;
  }
}

// Two blocks per SM: what shared memory allows for kHD = 32 (77 KiB a block); without the bound ptxas
// held the kHD = 16 kernel to 96 registers for sm_80 and spilled.
template <typename T, int kHD>
__global__ void __launch_bounds__(kMmaThreads, 2) window_attention_bwd_kernel(const WindowAttentionParams p) {
  static_assert(kHD % 8 == 0, "head_dim is padded to whole k-steps and column tiles");
  using S = MmaBwdSmem<kHD>;
  extern __shared__ __align__(16) float smem[];
  __shared__ float bias_s[kBins];
  __shared__ TokenTable tok;
  const MmaWindow win(p);
  win.describe_tokens(p, tok);
  win.load_bias(p, bias_s);
  __syncthreads();

  const T* qkv = static_cast<const T*>(p.qkv);
  const int dim = p.heads * p.head_dim, channel0 = win.head * p.head_dim, hd = p.head_dim, n = win.tokens;
  StagedRows<T, kHD> q, k, v, g;
  q.load(qkv, 3 * dim, channel0, hd, tok, n);
  k.load(qkv, 3 * dim, dim + channel0, hd, tok, n);
  v.load(qkv, 3 * dim, 2 * dim + channel0, hd, tok, n);
  g.load(static_cast<const T*>(p.dout), dim, channel0, hd, tok, n);
  const bool ok = q.template store<S::kRowQ>(smem + S::kQ) & k.template store<S::kRowK>(smem + S::kK) &
                  v.template store<S::kRowK>(smem + S::kV) & g.template store<S::kRowQ>(smem + S::kDout);
  const bool exact = __syncthreads_or(!ok) || !mma::kTensorCores;
  const ScoreRule rule(bias_s, p.scale, win.w);
  T* dqkv = static_cast<T*>(p.out);
  if (exact) {
    exact_backward<T, kHD>(p, win, tok, rule, smem, dqkv, dim, channel0);
  } else {
    const int r0 = threadIdx.x / 32 * 16;  // the warp's query rows, then its key rows
    const mma::Lane l(threadIdx.x % 32);
    if (r0 < n) bwd_rows<T, kHD>(p, win, tok, rule, smem, dqkv, dim, channel0, r0, l);
    __syncthreads();
    if (r0 < n) bwd_columns<T, kHD>(p, win, tok, smem, dqkv, dim, channel0, r0, l);
  }
  dtable_partials<S::kMatrixRow>(p, win, smem + S::kDs);  // dS is complete: both paths synchronised after it
}

}  // namespace
}  // namespace attention

void window_attention_bwd_launch(const WindowAttentionParams& p, cudaStream_t stream) {
  using namespace attention;
  launch_windows(
      p, kMmaThreads, stream,
      [](auto t, auto head_dim) { return window_attention_bwd_kernel<decltype(t), decltype(head_dim)::value>; },
      [](auto head_dim) { return MmaBwdSmem<decltype(head_dim)::value>::kBytes; });
}

}  // namespace mambaic
