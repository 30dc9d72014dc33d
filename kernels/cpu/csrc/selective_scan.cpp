// CPU selective scan (forward), the hot loop of MambaIC on machines without a GPU.
//
// The PyTorch backend pays a full memory pass per elementwise step over (T, batch, KD, N)
// temporaries; here one channel's N states stay in registers while the loop walks L, so the
// cost is the N exps per (channel, step) and nothing else. Work is split over (batch, group,
// block of channels) with at::parallel_for. B and C of a chunk of steps are transposed once per
// group into step-major (T, N) scratch, so the inner loop over n reads contiguous memory and the
// compiler vectorises it (with -ffast-math, glibc's vector expf).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kChunk = 256;        // steps whose B, C are transposed at a time (2 x 16 KiB at N=16)
constexpr int64_t kChannelBlock = 32;  // channels of one group per task: enough tasks for the threads

#define CHECK_INPUT(x, name)                                                                     \
  TORCH_CHECK((x).device().is_cpu(), "selective_scan_fwd_cpu: " name " must be a CPU tensor");  \
  TORCH_CHECK((x).scalar_type() == at::kFloat, "selective_scan_fwd_cpu: " name " must be float32, got ", (x).scalar_type()); \
  TORCH_CHECK((x).is_contiguous(), "selective_scan_fwd_cpu: " name " must be contiguous")

// One block of channels of one (batch, group): the states of a channel live in h[] across chunks.
template <int kN>
void scan_block(const float* u, const float* delta, const float* A, const float* B, const float* C, const float* D,
                const float* bias, float* y, int64_t L, int64_t n_state, int64_t c0, int64_t c1, bool delta_softplus,
                float* Bt, float* Ct, float* dts, float* dtus, float* states) {
  const int64_t N = kN > 0 ? kN : n_state;
  std::fill(states, states + (c1 - c0) * N, 0.f);
  for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
    const int64_t tn = std::min(kChunk, L - t0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < tn; ++t) {
        Bt[t * N + n] = B[n * L + t0 + t];
        Ct[t * N + n] = C[n * L + t0 + t];
      }
    for (int64_t c = c0; c < c1; ++c) {
      float* h = states + (c - c0) * N;
      const float* a = A + c * N;
      const float* uc = u + c * L + t0;
      const float* dc = delta + c * L + t0;
      float* yc = y + c * L + t0;
      const float b = bias ? bias[c] : 0.f;
      const float skip = D ? D[c] : 0.f;
      // step sizes of the chunk first, in a loop over t that vectorises (softplus is an exp and a
      // log1p: done per step inside the recurrence it cost more than the N exps of the states)
      for (int64_t t = 0; t < tn; ++t) {
        const float x = dc[t] + b;
        dts[t] = delta_softplus ? (x <= 20.f ? std::log1p(std::exp(x)) : x) : x;
        dtus[t] = dts[t] * uc[t];
      }
      for (int64_t t = 0; t < tn; ++t) {
        const float dt = dts[t];
        const float dtu = dtus[t];
        const float* bt = Bt + t * N;
        const float* ct = Ct + t * N;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          h[n] = std::exp(dt * a[n]) * h[n] + dtu * bt[n];
          acc += ct[n] * h[n];
        }
        yc[t] = acc + skip * uc[t];
      }
    }
  }
}

// The scan over (batch, group, block of channels) tasks. B and C rows of image b, group k start at
// B + b * K * N * L + k * N * L (rows of L steps, contiguous).
void scan_all(const float* pu, const float* pd, const float* pA, const float* pB, const float* pC, const float* pD,
              const float* pbias, float* py, int64_t batch, int64_t KD, int64_t K, int64_t N, int64_t L,
              bool delta_softplus) {
  const int64_t G = KD / K;
  const int64_t blocks = (G + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, batch * K * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Bt(kChunk * N), Ct(kChunk * N), dts(kChunk), dtus(kChunk), states(kChannelBlock * N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % blocks, k = (task / blocks) % K, b = task / (blocks * K);
      const int64_t c0 = blk * kChannelBlock, c1 = std::min(G, c0 + kChannelBlock);
      const int64_t d0 = k * G;  // first channel of the group
      const int64_t off = (b * KD + d0) * L;
      const float* Bg = pB + (b * K + k) * N * L;
      const float* Cg = pC + (b * K + k) * N * L;
      auto run = [&](auto n_tag) {
        scan_block<decltype(n_tag)::value>(pu + off, pd + off, pA + d0 * N, Bg, Cg, pD ? pD + d0 : nullptr,
                                           pbias ? pbias + d0 : nullptr, py + off, L, N, c0, c1, delta_softplus,
                                           Bt.data(), Ct.data(), dts.data(), dtus.data(), states.data());
      };
      if (N == 16)  // MambaIC's d_state 16: a fixed trip count vectorises best
        run(std::integral_constant<int, 16>{});
      else
        run(std::integral_constant<int, 0>{});
    }
  });
}

}  // namespace

torch::Tensor selective_scan_fwd_cpu(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& B, const torch::Tensor& C,
                                     const c10::optional<torch::Tensor>& D,
                                     const c10::optional<torch::Tensor>& delta_bias, bool delta_softplus) {
  CHECK_INPUT(u, "u");
  CHECK_INPUT(delta, "delta");
  CHECK_INPUT(A, "A");
  CHECK_INPUT(B, "B");
  CHECK_INPUT(C, "C");
  if (D) { CHECK_INPUT(*D, "D"); }
  if (delta_bias) { CHECK_INPUT(*delta_bias, "delta_bias"); }
  const int64_t batch = u.size(0), KD = u.size(1), L = u.size(2);
  const int64_t K = B.size(1), N = A.size(1);
  TORCH_CHECK(K > 0 && KD % K == 0, "selective_scan_fwd_cpu: K = B.shape[1] must divide KD = ", KD);
  auto y = torch::empty_like(u);
  scan_all(u.data_ptr<float>(), delta.data_ptr<float>(), A.data_ptr<float>(), B.data_ptr<float>(), C.data_ptr<float>(),
           D ? D->data_ptr<float>() : nullptr, delta_bias ? delta_bias->data_ptr<float>() : nullptr, y.data_ptr<float>(),
           batch, KD, K, N, L, delta_softplus);
  return y;
}

void ss2d_direction_cl_cpu(const torch::Tensor& u, const torch::Tensor& proj, const torch::Tensor& w,
                           const torch::Tensor& A, const torch::Tensor& skip, const torch::Tensor& bias,
                           torch::Tensor& out, bool cols, bool reverse, bool accumulate);
torch::Tensor cross_scan_cpu(const torch::Tensor& x, bool channel_last);
torch::Tensor cross_merge_cpu(const torch::Tensor& y);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_fwd", &selective_scan_fwd_cpu, "selective scan forward on CPU (float32)");
  m.def("ss2d_direction_cl", &ss2d_direction_cl_cpu, "one ss2d_core direction on CPU, into the channel-last output");
  m.def("cross_scan", &cross_scan_cpu, "cross-scan on CPU");
  m.def("cross_merge", &cross_merge_cpu, "cross-merge on CPU, channel-first output");
}
