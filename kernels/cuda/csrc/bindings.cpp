// Torch bindings of the CUDA kernels: argument checks, the parameter struct (strides in
// elements), the current stream. The Python side (kernels/cuda/) registers the ops, their fake
// kernels and autograd; it passes float32 tensors, casting other dtypes.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "selective_scan.h"

namespace {

void check_cuda_fp32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32 here, got ", t.scalar_type());
  TORCH_CHECK(t.stride(-1) == 1, name, " must be contiguous along its last dimension, got strides ", t.strides());
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

const float* optional_ptr(const c10::optional<at::Tensor>& t, const char* name, int64_t channels) {
  if (!t.has_value()) return nullptr;
  check_cuda_fp32(*t, name);
  check_shape(*t, name, {channels});
  return t->data_ptr<float>();
}

void launch_checked(const mambaic::ScanFwdParams& p) {
  const char* why = mambaic::selective_scan_fwd_unsupported(p);
  TORCH_CHECK(why[0] == '\0', "selective_scan (cuda): ", why);
  mambaic::selective_scan_fwd_launch(p, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The public op: u, delta (batch, KD, L); A (KD, N); B, C (batch, K, N, L); D, delta_bias (KD,).
at::Tensor selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& C, const c10::optional<at::Tensor>& D,
                              const c10::optional<at::Tensor>& delta_bias, bool delta_softplus) {
  for (auto [t, name] : {std::pair{&u, "u"}, {&delta, "delta"}, {&A, "A"}, {&B, "B"}, {&C, "C"}}) {
    check_cuda_fp32(*t, name);
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  c10::cuda::CUDAGuard guard(u.device());
  const int64_t batch = u.size(0), channels = u.size(1), length = u.size(2), groups = B.size(1), states = A.size(1);
  check_shape(delta, "delta", u.sizes());
  check_shape(A, "A", {channels, states});
  check_shape(B, "B", {batch, groups, states, length});
  check_shape(C, "C", {batch, groups, states, length});
  auto y = at::empty_like(u);
  mambaic::ScanFwdParams p{};
  p.dir[0] = {u.data_ptr<float>(), delta.data_ptr<float>(), A.data_ptr<float>(), B.data_ptr<float>(),
              C.data_ptr<float>(), optional_ptr(D, "D", channels), optional_ptr(delta_bias, "delta_bias", channels),
              false};
  p.directions = 1;
  p.batch = batch, p.channels = channels, p.groups = groups, p.states = states, p.length = length;
  p.u_batch = u.stride(0), p.u_channel = u.stride(1);
  p.bc_batch = B.stride(0), p.bc_group = B.stride(1), p.bc_state = B.stride(2);
  p.y = y.data_ptr<float>(), p.y_batch = y.stride(0), p.y_channel = y.stride(1);
  p.softplus = delta_softplus, p.accumulate = false;
  launch_checked(p);
  return y;
}

// Two directions of the fused SS2D core over one sequence `seq` (batch, D, L), the second walked
// backwards, both added into `out` (batch, D, L), which the caller zeroes: two float additions
// onto zero commute exactly, so the result does not depend on which lands first.
// deltas: two (batch, D, L); As: two (D, N); Bs / Cs: two (batch, N, L) views of the projection
// (any batch and state strides); Ds, biases: two (D,).
void ss2d_pair_fwd(const at::Tensor& seq, std::vector<at::Tensor> deltas, std::vector<at::Tensor> As,
                   std::vector<at::Tensor> Bs, std::vector<at::Tensor> Cs, std::vector<at::Tensor> Ds,
                   std::vector<at::Tensor> biases, at::Tensor& out) {
  check_cuda_fp32(seq, "seq");
  check_cuda_fp32(out, "out");
  TORCH_CHECK(seq.is_contiguous() && out.is_contiguous(), "seq and out must be contiguous");
  c10::cuda::CUDAGuard guard(seq.device());
  const int64_t batch = seq.size(0), channels = seq.size(1), length = seq.size(2), states = As[0].size(1);
  check_shape(out, "out", seq.sizes());
  mambaic::ScanFwdParams p{};
  for (int d = 0; d < 2; ++d) {
    check_cuda_fp32(deltas[d], "delta");
    TORCH_CHECK(deltas[d].is_contiguous(), "delta must be contiguous");
    check_shape(deltas[d], "delta", seq.sizes());
    check_cuda_fp32(As[d], "A");
    check_shape(As[d], "A", {channels, states});
    for (auto [t, name] : {std::pair{&Bs[d], "B"}, {&Cs[d], "C"}}) {
      check_cuda_fp32(*t, name);
      check_shape(*t, name, {batch, states, length});
      TORCH_CHECK(t->strides() == Bs[0].strides(), "B and C of both directions must share strides");
    }
    p.dir[d] = {seq.data_ptr<float>(), deltas[d].data_ptr<float>(), As[d].data_ptr<float>(), Bs[d].data_ptr<float>(),
                Cs[d].data_ptr<float>(), optional_ptr(Ds[d], "D", channels), optional_ptr(biases[d], "bias", channels),
                d == 1};
  }
  p.directions = 2;
  p.batch = batch, p.channels = channels, p.groups = 1, p.states = states, p.length = length;
  p.u_batch = seq.stride(0), p.u_channel = seq.stride(1);
  p.bc_batch = Bs[0].stride(0), p.bc_group = 0, p.bc_state = Bs[0].stride(1);
  p.y = out.data_ptr<float>(), p.y_batch = out.stride(0), p.y_channel = out.stride(1);
  p.softplus = true, p.accumulate = true;
  launch_checked(p);
}

// out (batch, cols, rows) = in (batch, rows, cols) transposed, or += when accumulate.
void transpose(const at::Tensor& in, at::Tensor& out, bool accumulate) {
  check_cuda_fp32(in, "in");
  check_cuda_fp32(out, "out");
  TORCH_CHECK(in.is_contiguous() && out.is_contiguous(), "transpose: in and out must be contiguous");
  TORCH_CHECK(in.dim() == 3 && out.dim() == 3 && out.size(0) == in.size(0) && out.size(1) == in.size(2) &&
                  out.size(2) == in.size(1),
              "transpose: out must have shape (batch, cols, rows) for in (batch, rows, cols), got ", out.sizes(),
              " for ", in.sizes());
  c10::cuda::CUDAGuard guard(in.device());
  mambaic::transpose_launch(in.data_ptr<float>(), out.data_ptr<float>(), in.size(0), in.size(1), in.size(2),
                            accumulate, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_fwd", &selective_scan_fwd, "forward selective scan (float32)");
  m.def("ss2d_pair_fwd", &ss2d_pair_fwd, "two directions of the fused SS2D core into one accumulator");
  m.def("transpose", &transpose, "batched transpose, optionally accumulating");
}
