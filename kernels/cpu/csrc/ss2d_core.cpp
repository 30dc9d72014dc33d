// ss2d_core forward on CPU: the four scan directions of SS2D added straight into the channel-last
// output (batch, H, W, D), with no other map of u's size.
//
// A task owns 16 consecutive channels of one image (one 64-byte line of a channel-last position)
// and walks the direction's sequence, its 16 channels side by side in SIMD lanes: per step it
// gathers u at the step's position, forms delta = w . proj[0:R] + bias and its softplus, runs the
// N states of each channel (B and C broadcast from the step's projection row), and adds the 16
// outputs to the position's line of `out`. The column directions (k = 1, 3) visit the positions
// column by column and the reversed ones (k = 2, 3) backwards: only the position arithmetic
// differs, so u is never transposed and no accumulator exists besides `out`. Each output element
// receives the directions in the order the caller runs them, so the result is the same on every
// run and thread count.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace {

constexpr int64_t kLanes = 16;  // channels per task: one 64-byte line of the channel-last output
constexpr int64_t kMaxStates = 64;

template <int kN>
void direction_block(const float* u, const float* proj, const float* w, const float* A, const float* skip,
                     const float* bias, float* out, int64_t D, int64_t H, int64_t W, int64_t R, int64_t n_state,
                     int64_t d0, bool cols, bool reverse, bool accumulate) {
  const int64_t N = kN > 0 ? kN : n_state, L = H * W, P = R + 2 * N, nc = std::min(kLanes, D - d0);
  // the block's parameters, lane-major and zero-padded past the last channel
  float wl[64][kLanes] = {}, Al[kMaxStates][kLanes] = {}, h[kMaxStates][kLanes] = {};
  float skipl[kLanes] = {}, biasl[kLanes] = {};
  for (int64_t c = 0; c < nc; ++c) {
    for (int64_t r = 0; r < R; ++r) wl[r][c] = w[(d0 + c) * R + r];
    for (int64_t n = 0; n < N; ++n) Al[n][c] = A[(d0 + c) * N + n];
    skipl[c] = skip[d0 + c], biasl[c] = bias[d0 + c];
  }
  const float* uc = u + d0 * L;
  for (int64_t s = 0; s < L; ++s) {
    const int64_t l = reverse ? L - 1 - s : s;          // index in the direction's sequence
    const int64_t pos = cols ? (l % H) * W + l / H : l;  // its position in the image (row-major)
    const float* p = proj + l * P;
    float x[kLanes] = {}, dt[kLanes], y[kLanes];
    for (int64_t c = 0; c < nc; ++c) x[c] = uc[c * L + pos];
#pragma omp simd
    for (int64_t c = 0; c < kLanes; ++c) dt[c] = biasl[c];
    for (int64_t r = 0; r < R; ++r) {
      const float pr = p[r];
#pragma omp simd
      for (int64_t c = 0; c < kLanes; ++c) dt[c] += wl[r][c] * pr;
    }
#pragma omp simd
    for (int64_t c = 0; c < kLanes; ++c) {
      const float v = dt[c];
      dt[c] = v <= 20.f ? std::log1p(std::exp(v)) : v;  // softplus, torch's threshold
      y[c] = skipl[c] * x[c];
      x[c] *= dt[c];
    }
    const float* B = p + R;
    const float* C = p + R + N;
    for (int64_t n = 0; n < N; ++n) {
      const float b = B[n], cn = C[n];
#pragma omp simd
      for (int64_t c = 0; c < kLanes; ++c) {
        h[n][c] = std::exp(dt[c] * Al[n][c]) * h[n][c] + x[c] * b;
        y[c] += cn * h[n][c];
      }
    }
    float* o = out + pos * D + d0;
    if (accumulate)
      for (int64_t c = 0; c < nc; ++c) o[c] += y[c];
    else
      for (int64_t c = 0; c < nc; ++c) o[c] = y[c];
  }
}

}  // namespace

// One direction of ss2d_core into out (batch, H, W, D), channel-last; `accumulate` adds to it.
// u (batch, D, H, W); proj (batch, L, R + 2N): the direction's x_proj output, one row of
// (delta rank | B | C) per step of its sequence, in sequence order (column-major positions for
// `cols`, not reversed); w (D, R) = dt_projs_weight[k]; A (D, N); skip, bias (D). delta_softplus
// is always on, as in SS2D.
void ss2d_direction_cl_cpu(const torch::Tensor& u, const torch::Tensor& proj, const torch::Tensor& w,
                           const torch::Tensor& A, const torch::Tensor& skip, const torch::Tensor& bias,
                           torch::Tensor& out, bool cols, bool reverse, bool accumulate) {
  for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{&u, &proj, &w, &A, &skip, &bias, &out})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "ss2d_direction_cl_cpu: every tensor must be a contiguous float32 CPU tensor");
  const int64_t batch = u.size(0), D = u.size(1), H = u.size(2), W = u.size(3), L = H * W;
  const int64_t R = w.size(1), N = A.size(1);
  TORCH_CHECK(R <= 64 && N <= kMaxStates, "ss2d_direction_cl_cpu: at most 64 delta-rank rows and 64 states");
  TORCH_CHECK(proj.dim() == 3 && proj.size(0) == batch && proj.size(1) == L && proj.size(2) == R + 2 * N,
              "ss2d_direction_cl_cpu: proj must be (batch, L, R + 2N)");
  TORCH_CHECK(out.dim() == 4 && out.size(0) == batch && out.size(1) == H && out.size(2) == W && out.size(3) == D,
              "ss2d_direction_cl_cpu: out must be (batch, H, W, D)");
  const int64_t blocks = (D + kLanes - 1) / kLanes;
  const float *pu = u.data_ptr<float>(), *pp = proj.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, d0 = (task % blocks) * kLanes;
      auto run = [&](auto n_tag) {
        direction_block<decltype(n_tag)::value>(pu + b * D * L, pp + b * L * (R + 2 * N), w.data_ptr<float>(),
                                                A.data_ptr<float>(), skip.data_ptr<float>(), bias.data_ptr<float>(),
                                                po + b * L * D, D, H, W, R, N, d0, cols, reverse, accumulate);
      };
      if (N == 16)  // MambaIC's d_state: a fixed trip count unrolls the state loop
        run(std::integral_constant<int, 16>{});
      else
        run(std::integral_constant<int, 0>{});
    }
  });
}
